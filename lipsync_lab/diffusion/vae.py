"""The VAE as the pipeline uses it: pixels in [-1, 1] ↔ scaled latents, one class per `vae` option.

`KLVAE` (sd-vae-ft-mse architecture, LatentSync's) samples the posterior as upstream does, mean + std·noise, with
the noise handed in by the caller — so the caller decides how many draws a batch consumes (always `batch_frames`,
padded or not: a short batch then leaves the random stream where a full one would). `TinyVAE` (TAESD) is
deterministic. Both are built with seeded random weights at the model preset's size, or loaded from a local
diffusers folder (`vae.path`).
"""

from __future__ import annotations

import logging

import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

log = logging.getLogger(__name__)


class LatentVAE(nn.Module):
    model_class: type = nn.Module
    stochastic = False  # True: encode() needs noise of the latents' shape

    def __init__(self, name: str, arch: DictConfig, size: str, scaling_factor: float, shift_factor: float = 0.0,
                 path: str | None = None, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        if path:
            from lipsync_lab.diffusion.checkpoints import load_vae_folder

            model = load_vae_folder(self.model_class, name, path)
        else:
            model = instantiate(arch[size])
        log.info("VAE '%s': %s", name, f"from {path}" if path else f"{size} size, random (seed {seed})")
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor or 0.0)

    @property
    def downscale(self) -> int:
        """Pixels per latent along each side: both kinds halve the resolution between consecutive encoder blocks."""
        return 2 ** (len(self._encoder_blocks()) - 1)

    def _encoder_blocks(self) -> list:
        raise NotImplementedError

    def _latents(self, pixels: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, pixels: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return (self._latents(pixels, noise) - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents / self.scaling_factor + self.shift_factor).sample

    def compile(self, **kwargs) -> None:
        """torch.compile the encoder and decoder networks in place (the scaling and sampling around them stay
        eager)."""
        self.model.encoder.compile(**kwargs)
        self.model.decoder.compile(**kwargs)

    def fuse_qkv_projections(self) -> None:
        if hasattr(self.model, "fuse_qkv_projections"):
            self.model.fuse_qkv_projections()


class KLVAE(LatentVAE):
    model_class = AutoencoderKL
    stochastic = True

    def _encoder_blocks(self) -> list:
        return list(self.model.config.block_out_channels)

    def _latents(self, pixels, noise):
        posterior = self.model.encode(pixels).latent_dist
        return posterior.mean + posterior.std * noise.to(posterior.mean.dtype)


class TinyVAE(LatentVAE):
    model_class = AutoencoderTiny

    def _encoder_blocks(self) -> list:
        return list(self.model.config.encoder_block_out_channels)

    def _latents(self, pixels, noise):
        return self.model.encode(pixels).latents
