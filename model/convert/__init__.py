"""Converters from other VQGAN checkpoint formats into this package's (diffusers') `VQModel` format.

`taming`: taming-transformers / latent-diffusion `.ckpt` + `.yaml` pairs (`taming.load`, `taming.find_pair`). The
modules here only map configs and state dicts; building and saving a model is `VQModel.from_taming` /
`save_pretrained`, and `model.checkpoint` reads a directory holding such a pair as if it were converted.
"""
