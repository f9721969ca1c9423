"""Pieces of the training script (`python -m model.train`): data, presets, the VQ objective, evaluation.

Training-only code: the serving path never imports this package.
"""
