"""LatentSync's UNets as diffusers models, with LatentSync's GroupNorm conventions (reference §4.1–4.3).

Architecture: v1.0 is a plain `UNet2DConditionModel` run on frames folded into the batch; v1.5/v1.6 are the same
UNet plus AnimateDiff-style motion modules, i.e. diffusers' `UNetMotionModel` built from it and a `MotionAdapter`
(`motion_unet`, a Hydra `_target_`).

Numerics: LatentSync applies `nn.GroupNorm` to 5-D (B, C, F, H, W) tensors in its ResNet blocks and before
`conv_out`, so those statistics are pooled over the frames of a clip — per element of B, and under CFG B is the
[null audio | audio] axis, so the two halves are normalised separately. Its motion modules fold the frames into the
batch before their GroupNorm, so that one is per frame. Stock diffusers does the opposite in both places.
`apply_norm(unet, "latentsync")` swaps those GroupNorm modules for subclasses that keep the same parameters (the
state-dict keys do not change) and normalise the LatentSync way; `"diffusers"` keeps the stock modules.

A 2-D UNet's (B·F, C, H, W) input does not say how many frames make a clip, so every call of a UNet must run inside
`frames_per_call(unet, F)`, which also enforces the motion modules' position-table limit.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from lipsync_lab.errors import LipsyncInputError

NORMS = ("latentsync", "diffusers")


def motion_unet(motion_adapter: dict, **unet2d) -> UNetMotionModel:
    """v1.5/v1.6: the v1.0 `UNet2DConditionModel` config (`unet2d`) plus motion modules (`MotionAdapter` kwargs).

    diffusers' own `from_unet2d` translates the two configs; the 2-D UNet and the adapter are built on the meta
    device because only their configs are used (`load_weights=False`), so nothing is allocated twice.
    """
    with torch.device("meta"):
        base = UNet2DConditionModel(**unet2d)
        adapter = MotionAdapter(**motion_adapter)
    return UNetMotionModel.from_unet2d(base, adapter, load_weights=False)


class ClipGroupNorm(nn.GroupNorm):
    """GroupNorm of (B·F, C, H, W) frames with statistics per clip (over C/G × F × H × W), as LatentSync's
    `nn.GroupNorm` on (B, C, F, H, W) in its ResNet blocks and `conv_norm_out`."""

    frames: int | None = None  # frames per clip, set by `frames_per_call` for the duration of one UNet call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frames is None:  # guessing would silently give per-frame (diffusers) numerics
            raise RuntimeError("a clip-level GroupNorm ran outside lipsync_lab.diffusion.latentsync.frames_per_call")
        clips = x.unflatten(0, (-1, self.frames)).transpose(1, 2)  # (B, C, F, H, W)
        out = F.group_norm(clips, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).flatten(0, 1)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm of (B, C, F, H, W) clips with statistics per frame, as LatentSync's motion modules (they fold F
    into the batch first); diffusers' `AnimateDiffTransformer3D` pools them over F."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.transpose(1, 2).flatten(0, 1)  # (B·F, C, H, W)
        out = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return out.unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)


def _swap(parent: nn.Module, name: str, cls: type[nn.GroupNorm]) -> None:
    """Replace `parent.name` (a GroupNorm) by a `cls` that shares its parameters."""
    old = getattr(parent, name)
    new = cls(old.num_groups, old.num_channels, old.eps, old.affine, device="meta")
    new.weight, new.bias = old.weight, old.bias
    setattr(parent, name, new)


def apply_norm(unet: nn.Module, norm: str) -> nn.Module:
    """Give `unet` the GroupNorm convention `norm` (one of NORMS), in place; returns it."""
    if norm not in NORMS:
        raise LipsyncInputError("model.norm", f"'{norm}' is not one of: {', '.join(NORMS)}")
    if norm == "diffusers":
        return unet
    for module in list(unet.modules()):
        if isinstance(module, ResnetBlock2D):
            _swap(module, "norm1", ClipGroupNorm)
            _swap(module, "norm2", ClipGroupNorm)
        elif isinstance(module, AnimateDiffTransformer3D):
            _swap(module, "norm", FrameGroupNorm)
    if unet.conv_norm_out is not None:
        _swap(unet, "conv_norm_out", ClipGroupNorm)
    _CLIP_NORMS.pop(unet, None)
    return unet


def max_frames_per_call(unet: nn.Module) -> int | None:
    """The most frames one call can take: the motion modules' sinusoidal position table (24 rows for v1.5/v1.6);
    None for UNets without temporal layers."""
    return unet.config.motion_max_seq_length if isinstance(unet, UNetMotionModel) else None


_CLIP_NORMS: "weakref.WeakKeyDictionary[nn.Module, list[ClipGroupNorm]]" = weakref.WeakKeyDictionary()


def _clip_norms(unet: nn.Module) -> list[ClipGroupNorm]:
    """The UNet's clip-level norms, found once (walking a full UNet's modules on every step costs ~1 ms)."""
    if unet not in _CLIP_NORMS:
        _CLIP_NORMS[unet] = [m for m in unet.modules() if isinstance(m, ClipGroupNorm)]
    return _CLIP_NORMS[unet]


@contextmanager
def frames_per_call(unet: nn.Module, frames: int):
    """Run the UNet calls inside on clips of `frames` frames each (the input's batch is B·F, or B with F apart)."""
    limit = max_frames_per_call(unet)
    if limit is not None and frames > limit:
        raise LipsyncInputError("batch_frames", f"{frames} frames in one UNet call, but the motion modules' position "
                                                f"table has {limit} rows: use batch_frames <= {limit}")
    norms = _clip_norms(unet)
    for m in norms:
        m.frames = frames
    try:
        yield
    finally:
        for m in norms:
            m.frames = None
