"""Build the UNet, VAE and scheduler from their Hydra configs.

Models are diffusers classes built from an architecture config (`_target_` + kwargs) with seeded random weights —
timings depend on the architecture, not the weights — or loaded from a checkpoint when the config names one.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lipsync_lab.diffusion.latentsync import apply_norm

log = logging.getLogger(__name__)


@contextmanager
def announce(what: str):
    """Say what is being built (it can take a while on CPU) and how long it took."""
    log.info("%s ...", what)
    start = time.perf_counter()
    yield
    log.info("%s: done in %.1f s", what, time.perf_counter() - start)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_unet(model_cfg: DictConfig, seed: int) -> torch.nn.Module:
    """The model preset's UNet: random seeded weights, or `model.checkpoint` loaded strictly; GroupNorms per
    `model.norm` (LatentSync's conventions unless the preset says `diffusers`)."""
    torch.manual_seed(seed)
    with announce(f"Building UNet '{model_cfg.name}'"):
        unet = apply_norm(instantiate(model_cfg.unet), model_cfg.get("norm", "latentsync"))
        checkpoint = model_cfg.get("checkpoint")
        if checkpoint:
            from lipsync_lab.diffusion.checkpoints import load_unet_checkpoint

            load_unet_checkpoint(unet, checkpoint, model_cfg)
    log.info("UNet: %.2f M parameters, %s weights", n_params(unet) / 1e6, checkpoint or f"random (seed {seed})")
    return unet.eval().requires_grad_(False)


def build_vae(vae_cfg: DictConfig, size: str, seed: int) -> torch.nn.Module:
    """VAE of the chosen kind (kl | tiny) at `size` (full | small), or a local diffusers folder (`vae.path`)."""
    torch.manual_seed(seed)
    path = vae_cfg.get("path")
    with announce(f"Building VAE '{vae_cfg.name}' ({'from ' + str(path) if path else size})"):
        if path:
            from lipsync_lab.diffusion.checkpoints import load_vae_folder

            vae = load_vae_folder(vae_cfg, path)
        else:
            vae = instantiate(vae_cfg.arch[size])
    return vae.eval().requires_grad_(False)


def build_scheduler(scheduler_cfg: DictConfig):
    return instantiate(scheduler_cfg.scheduler)


def vae_latent_scale(vae_cfg: DictConfig) -> tuple[float, float]:
    return float(vae_cfg.scaling_factor), float(vae_cfg.get("shift_factor") or 0.0)

