"""Diffusion stage: LatentSync's UNet + VAE + scheduler, and the eight timed sub-stages of one batch."""
