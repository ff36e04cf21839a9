"""The UNet as the pipeline calls it: one module that owns LatentSync's clip semantics.

`LatentSyncUNet(sample (B, F, 13, h, w), t, context (B, F, 50, 384), real (F,) | None) → eps (B, F, 4, h, w)`.
B clips of F frames each (under CFG, B = 2: [null audio | audio]); the clip layout travels with the call (the
input's shape and `real`, which marks padded frames), never through attributes a caller must set. The wrapped
diffusers model (2-D or motion UNet) and its frame limit are this module's business: callers never ask which kind
it is, and `compile()` compiles the inner model in place, so the wrapper stays the same object.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from diffusers import UNetMotionModel
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from lipsync_lab.diffusion.latentsync import FrameMask, mask_temporal_attention
from lipsync_lab.errors import LipsyncInputError

log = logging.getLogger(__name__)

NormConvention = Callable[[nn.Module, FrameMask], None]  # a `norm` option: swaps the inner model's GroupNorms


class LatentSyncUNet(nn.Module):
    def __init__(self, unet: nn.Module, norms: NormConvention):
        super().__init__()
        self.unet = unet
        self.temporal = isinstance(unet, UNetMotionModel)  # the one place that asks which kind of UNet this is
        self.frame_mask = FrameMask()
        norms(unet, self.frame_mask)
        if self.temporal:
            mask_temporal_attention(unet, self.frame_mask)
        self.sdpa_backends: list | None = None  # optimize.sdpa: restrict scaled_dot_product_attention's kernels

    @property
    def max_frames(self) -> int | None:
        """The most frames a clip can have: the motion modules' sinusoidal position table (24 rows for v1.5/v1.6);
        None for UNets without temporal layers."""
        return self.unet.config.motion_max_seq_length if self.temporal else None

    def check_frames(self, frames: int) -> None:
        if self.max_frames is not None and frames > self.max_frames:
            raise LipsyncInputError("batch_frames", f"{frames} frames per UNet call, but this UNet takes at most "
                                                    f"{self.max_frames} (its temporal position table)")

    def forward(self, sample: torch.Tensor, timestep, context: torch.Tensor,
                real: torch.Tensor | None = None) -> torch.Tensor:
        f = sample.shape[1]
        self.check_frames(f)
        self.frame_mask.set(real, f)
        context = context.flatten(0, 1)  # one audio window per frame, in the frames' order
        if self.sdpa_backends:
            from torch.nn.attention import sdpa_kernel

            with sdpa_kernel(self.sdpa_backends):
                return self._call(sample, timestep, context)
        return self._call(sample, timestep, context)

    def _call(self, sample, timestep, context):
        b, f = sample.shape[:2]
        if self.temporal:  # motion UNets take (B, C, F, h, w)
            out = self.unet(sample.transpose(1, 2), timestep, encoder_hidden_states=context, return_dict=False)[0]
            return out.transpose(1, 2)
        out = self.unet(sample.flatten(0, 1), timestep, encoder_hidden_states=context, return_dict=False)[0]
        return out.unflatten(0, (b, f))

    def compile(self, **kwargs) -> None:
        """torch.compile the inner model in place. The frame mask is written outside the compiled graph, so the
        graph sees only its (static) inputs and parameters — what CUDA graphs need — and the norms always take
        their masked path, so padded and unpadded calls run one graph."""
        self.frame_mask.static = True
        self.unet.compile(**kwargs)

    def fuse_qkv_projections(self) -> None:
        """diffusers' fused QKV projections (one matmul for q, k, v); the motion modules keep their masking."""
        self.unet.fuse_qkv_projections()
        if self.temporal:
            mask_temporal_attention(self.unet, self.frame_mask)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_unet(model_cfg: DictConfig, norms: NormConvention, seed: int) -> LatentSyncUNet:
    """The model preset's UNet: random seeded weights, or `model.checkpoint` loaded strictly; GroupNorms by the
    `norm` option."""
    torch.manual_seed(seed)
    unet = instantiate(model_cfg.unet)
    checkpoint = model_cfg.get("checkpoint")
    if checkpoint:
        from lipsync_lab.diffusion.checkpoints import load_unet_checkpoint

        load_unet_checkpoint(unet, checkpoint, model_cfg.name)
    log.info("UNet '%s': %.2f M parameters, %s weights", model_cfg.name, n_params(unet) / 1e6,
             checkpoint or f"random (seed {seed})")
    return LatentSyncUNet(unet.eval().requires_grad_(False), norms)
