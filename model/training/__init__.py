"""Pieces of the training script (`python -m model.train`): data, presets, the VQ objective, evaluation.

Training-only code: the serving path never imports this package (tests/model/test_imports.py, and the contracts of
[tool.importlinter] in pyproject.toml), and the installed wheel leaves it out: it runs from a checkout.
"""
