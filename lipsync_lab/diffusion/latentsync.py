"""LatentSync's UNets as diffusers models, with LatentSync's GroupNorm conventions (reference §4.1–4.3), and the
frame mask that keeps padded frames out of every computation that couples the frames of a clip.

Architecture: v1.0 is a plain `UNet2DConditionModel` run on frames folded into the batch; v1.5/v1.6 are the same
UNet plus AnimateDiff-style motion modules, i.e. diffusers' `UNetMotionModel` built from it and a `MotionAdapter`
(`motion_unet`, a Hydra `_target_`).

Numerics: LatentSync applies `nn.GroupNorm` to 5-D (B, C, F, H, W) tensors in its ResNet blocks and before
`conv_out`, so those statistics are pooled over the frames of a clip — per element of B, and under CFG B is the
[null audio | audio] axis, so the two halves are normalised separately. Its motion modules fold the frames into the
batch before their GroupNorm, so that one is per frame. Stock diffusers does the opposite in both places. The two
`norm` options (`latentsync_norms`, `diffusers_norms`) swap GroupNorm modules for subclasses that keep the same
parameters (the state-dict keys do not change).

Padding: a clip may carry padded frames (static shapes for compiled models: every call has `batch_frames`
frames). Whatever pools over frames — clip-level GroupNorm statistics and the motion modules' temporal attention —
counts only the real frames, so a real frame's output does not depend on the padding. Which frames are real is the
`FrameMask` of the UNet call, one tensor shared by those modules: diffusers passes nothing per call down to a
ResNet's norms, so `LatentSyncUNet` (diffusion/unet.py) writes it in place before each call of the inner model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn


def motion_unet(motion_adapter: dict, **unet2d) -> UNetMotionModel:
    """v1.5/v1.6: the v1.0 `UNet2DConditionModel` config (`unet2d`) plus motion modules (`MotionAdapter` kwargs).

    diffusers' own `from_unet2d` translates the two configs; the 2-D UNet and the adapter are built on the meta
    device because only their configs are used (`load_weights=False`), so nothing is allocated twice.
    """
    with torch.device("meta"):
        base = UNet2DConditionModel(**unet2d)
        adapter = MotionAdapter(**motion_adapter)
    return UNetMotionModel.from_unet2d(base, adapter, load_weights=False)


class FrameMask(nn.Module):
    """Which frames of the current UNet call's clips are real (1) or padding (0): a (F,) buffer, so it follows the
    model's `.to()`; its length is the clip length F of the call.

    `padded` says whether this call has padding; `static` (set when the model is compiled) makes the norms always
    take the masked path, so a compiled graph does not depend on that per-call flag. Eager calls without padding
    take the faster plain GroupNorm path."""

    def __init__(self, frames: int = 1):
        super().__init__()
        self.register_buffer("weights", torch.ones(frames), persistent=False)
        self.padded = False
        self.static = False

    @property
    def masked(self) -> bool:
        return self.static or self.padded

    def set(self, real: torch.Tensor | None, frames: int) -> None:
        """This call's mask: `real` (F,) with 1 for real frames, or all real if None. Written in place while the
        length stays the same (a compiled model sees one tensor whose contents change, not a new input)."""
        was_all_real, self.padded = not self.padded, real is not None
        if real is None and was_all_real and self.weights.shape == (frames,):
            return  # still all ones: no write (and no host → device copy) per UNet call
        new = torch.ones(frames, device=self.weights.device) if real is None else real
        if self.weights.shape == (frames,):
            self.weights.copy_(new, non_blocking=True)
        else:
            self.weights = new.to(self.weights.device, self.weights.dtype)


def masked_group_norm(x: torch.Tensor, groups: int, weight, bias, eps: float,
                      frame_weights: torch.Tensor) -> torch.Tensor:
    """GroupNorm of clips x (B, F, C, *spatial) with statistics per (clip, group) over the frames whose weight is
    1; the affine is applied to every frame, padded ones included.

    Written out because no library GroupNorm takes a mask. Per-frame sums (fp32) over a (B, F, G, rest) view,
    weighted over frames, then one fused multiply-add; for frames of (B·F, C, H, W) contiguous memory nothing is
    copied (the old transpose-then-GroupNorm made two copies).
    """
    b, f, c = x.shape[:3]
    per_group = x.reshape(b, f, groups, -1)  # a view when x is contiguous
    mean = per_group.mean(-1, dtype=torch.float32)                                        # (B, F, G)
    mean_sq = torch.linalg.vector_norm(per_group, dim=-1, dtype=torch.float32).square() / per_group.shape[-1]
    w = frame_weights.float()[None, :, None]
    w = w / w.sum()
    mean, mean_sq = (mean * w).sum(1), (mean_sq * w).sum(1)                               # (B, G)
    rstd = torch.rsqrt((mean_sq - mean.square()).clamp_min(0) + eps)
    scale = rstd[..., None].expand(b, groups, c // groups)                                # (B, G, C/G)
    if weight is not None:
        scale = scale * weight.float().view(groups, -1)
    shift = -mean[..., None] * scale
    if bias is not None:
        shift = shift + bias.float().view(groups, -1)
    shape = (b, 1, groups, c // groups) + (1,) * (x.dim() - 3)
    grouped = x.reshape(b, f, groups, c // groups, *x.shape[3:])
    return torch.addcmul(shift.view(shape).to(x.dtype), grouped, scale.view(shape).to(x.dtype)).view(x.shape)


class ClipGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per clip, over its real frames.

    layout "frames": input (B·F, C, H, W) — LatentSync's ResNet and `conv_norm_out` norms (nn.GroupNorm on 5-D
    clips upstream). layout "clips": input (B, C, F, H, W) — stock diffusers' motion-module norm (pools over F),
    used by the `diffusers` convention so that padding stays out of it too."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, frame_mask: FrameMask, layout: str,
                 **kw):
        super().__init__(num_groups, num_channels, eps, affine, **kw)
        self.frame_mask = frame_mask  # shared by every such norm of one UNet (a child module, no state-dict keys)
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.frame_mask
        if self.layout == "frames":
            clips = x.unflatten(0, (-1, mask.weights.shape[0]))                     # (B, F, C, H, W), a view
            if not mask.masked:  # every frame real: plain GroupNorm over the (B, C, F, H, W) clips
                return F.group_norm(clips.transpose(1, 2), self.num_groups, self.weight, self.bias,
                                    self.eps).transpose(1, 2).flatten(0, 1)
            return masked_group_norm(clips, self.num_groups, self.weight, self.bias, self.eps,
                                     mask.weights).flatten(0, 1)
        if not mask.masked:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        out = masked_group_norm(x.transpose(1, 2), self.num_groups, self.weight, self.bias, self.eps, mask.weights)
        return out.transpose(1, 2)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm of (B, C, F, H, W) clips with statistics per frame, as LatentSync's motion modules (they fold F
    into the batch first); diffusers' `AnimateDiffTransformer3D` pools them over F. Per frame, padding cannot
    leak into a real frame."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.transpose(1, 2).flatten(0, 1)  # (B·F, C, H, W)
        out = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return out.unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)


class MaskedTemporalAttention:
    """Attention processor for the motion modules' self-attention along the frames (sequence = F): padded frames
    are masked out as keys, so no real frame attends to them. diffusers' processors take a mask argument, but its
    motion blocks pass none; this one reads the UNet call's `FrameMask`. Handles fused QKV projections too."""

    def __init__(self, frame_mask: FrameMask):
        self.frame_mask = frame_mask

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, **kwargs) -> torch.Tensor:
        n, f, _ = hidden_states.shape                                        # (B·H·W, F, C)
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (N, heads, F, d)
        keep = (self.frame_mask.weights > 0)[None, None, None, :]            # (1, 1, 1, F): real keys only
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=attn.scale)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _swap(parent: nn.Module, name: str, cls: type[nn.GroupNorm], **kw) -> None:
    """Replace `parent.name` (a GroupNorm) by a `cls` that shares its parameters."""
    old = getattr(parent, name)
    new = cls(old.num_groups, old.num_channels, old.eps, old.affine, device="meta", **kw)
    new.weight, new.bias = old.weight, old.bias
    setattr(parent, name, new)


def _motion_modules(unet: nn.Module) -> list[AnimateDiffTransformer3D]:
    return [m for m in unet.modules() if isinstance(m, AnimateDiffTransformer3D)]


def mask_temporal_attention(unet: nn.Module, frame_mask: FrameMask) -> None:
    """Give every motion module's attention the masked processor (again after `fuse_qkv_projections`, which
    replaces every processor)."""
    for module in _motion_modules(unet):
        for attn in module.modules():
            if isinstance(attn, Attention):
                # the processor implements plain self-attention only: refuse an architecture it would get wrong
                assert attn.group_norm is None and attn.spatial_norm is None and attn.norm_q is None, attn
                attn.set_processor(MaskedTemporalAttention(frame_mask))


def latentsync_norms(unet: nn.Module, frame_mask: FrameMask) -> None:
    """`norm=latentsync`: ResNet and `conv_norm_out` GroupNorms per clip (over its real frames), motion-module
    GroupNorms per frame — LatentSync's function."""
    for module in list(unet.modules()):
        if isinstance(module, ResnetBlock2D):
            _swap(module, "norm1", ClipGroupNorm, frame_mask=frame_mask, layout="frames")
            _swap(module, "norm2", ClipGroupNorm, frame_mask=frame_mask, layout="frames")
    if unet.conv_norm_out is not None:
        _swap(unet, "conv_norm_out", ClipGroupNorm, frame_mask=frame_mask, layout="frames")
    for module in _motion_modules(unet):
        _swap(module, "norm", FrameGroupNorm)


def diffusers_norms(unet: nn.Module, frame_mask: FrameMask) -> None:
    """`norm=diffusers`: stock diffusers statistics (ResNet norms per frame, motion-module norms pooled over the
    clip); the pooled ones count only real frames, which changes nothing when a clip has no padding."""
    for module in _motion_modules(unet):
        _swap(module, "norm", ClipGroupNorm, frame_mask=frame_mask, layout="clips")
