"""Each protocol's wire format: REST replies, diffusers' remote VAE, the Open Inference Protocol."""
