"""What one denoising step is, for the variants that change it: guidance (`guidance=`, diffusion/guidance.py) decides
which UNet branches a step evaluates and how they combine; feature caching (`cache=`, diffusion/cache.py and the
options beside it) decides which UNet callable a step uses. Both also get a per-step hook after the scheduler's
step, in the shape of diffusers' `callback_on_step_end(pipeline, step, timestep, callback_kwargs) -> callback_kwargs`.
A new variant is one implementation file (a class with these methods) plus one YAML.

    UNetCall: (sample (B, F, 13, h, w), timestep, context (B, F, 50, 384), real (F,) | None) -> eps (B, F, 4, h, w)

B clips of F frames: under classifier-free guidance the two branches [null audio | audio] are two clips of one call
(LatentSync's norms keep each clip's statistics apart, so a branch's output does not depend on the other).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

UNetCall = Callable[..., torch.Tensor]


@dataclass
class Step:
    """One denoising step of one batch, as a guidance variant sees it."""

    index: int                   # 0 … steps − 1 in this batch's schedule
    timestep: torch.Tensor       # the scheduler's t (a 0-d tensor on the device)
    latents: torch.Tensor        # (F, 4, h, w) the noisy latents, already scaled for the model (scale_model_input)
    cond: torch.Tensor           # (F, 9, h, w) mouth mask, masked-face latents, reference latents
    context: torch.Tensor        # (copies, F, 50, 384) the guidance's embeddings (Guidance.embeddings)
    real: torch.Tensor | None    # (F,) 1 for real frames, 0 for padding (static shapes), or None
    reference: torch.Tensor      # (F, 4, h, w) the reference face's latents: the input latent x_0 of residual guidance
    alpha_bar: torch.Tensor      # ᾱ_t of this step (the scheduler's alphas_cumprod at t), 0-d


def unet_input(latents: torch.Tensor, cond: torch.Tensor, copies: int) -> torch.Tensor:
    """(copies, F, 13, h, w): the noisy latents beside their conditioning, once per branch."""
    return torch.cat([latents, cond], dim=1)[None].expand(copies, -1, -1, -1, -1)


class Guidance(Protocol):
    scale: float

    def embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """(copies, F, 50, 384) the audio embeddings its branches need, from the batch's (F, 50, 384) features."""

    def begin(self) -> None:
        """A new batch starts (state kept across its steps, such as a one-time negative, is reset)."""

    def predict(self, unet: UNetCall, step: Step) -> torch.Tensor:
        """The guided noise prediction (F, 4, h, w) of this step."""

    def copies(self, steps: int) -> list[int]:
        """UNet branches (clips of F frames) each step of a batch evaluates: its frame-evaluations and FLOPs."""

    def on_step_end(self, stage, step: int, timestep, kwargs: dict) -> dict:
        """After the scheduler's step: diffusers' callback_on_step_end (returns the kwargs, maybe changed)."""


class Cache(Protocol):
    def begin(self) -> None:
        """A new batch starts."""

    def kind(self, step: int) -> str:
        """Which UNet callable step `step` of a batch uses ("full", or a cheaper one such as "shallow")."""

    def call(self, unet, kind: str) -> UNetCall:
        """The callable of that kind around `unet` (a LatentSyncUNet: the run's, or a shape-only copy on the meta
        device when flops.py counts)."""

    def on_step_end(self, stage, step: int, timestep, kwargs: dict) -> dict:
        """After the scheduler's step: diffusers' callback_on_step_end."""
