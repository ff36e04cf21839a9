"""The UNet as the pipeline calls it: one module that owns LatentSync's clip semantics.

`LatentSyncUNet(sample (B, F, 13, h, w), t, context (B, F, 50, 384), real (F,) | None) → eps (B, F, 4, h, w)`,
t one timestep for the call or one per clip (B,). B clips of F frames each (under CFG, B = 2: [null audio | audio];
under Stream Batch, clips at different steps); the clip layout travels with the call (the input's shape and `real`,
which marks padded frames), never through attributes a caller must set. The wrapped
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
        if self.temporal:  # motion UNets take (B, C, F, h, w), and a timestep per clip
            out = self.unet(sample.transpose(1, 2), timestep, encoder_hidden_states=context, return_dict=False)[0]
            return out.transpose(1, 2)
        out = self.unet(sample.flatten(0, 1), self.per_frame(timestep, f), encoder_hidden_states=context,
                        return_dict=False)[0]
        return out.unflatten(0, (b, f))

    @staticmethod
    def per_frame(timestep, frames: int):
        """A 2-D UNet sees the clips' frames as one batch: a timestep per clip (B,) becomes one per frame (B·F,);
        one timestep for the whole call stays as it is."""
        if torch.is_tensor(timestep) and timestep.ndim == 1 and timestep.numel() > 1:
            return timestep.repeat_interleave(frames)
        return timestep

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

    # -- the forward in pieces, for feature caching (cache=deepcache, diffusion/deepcache.py) ----------------------
    # DeepCache cuts the UNet at one skip branch: a full step runs everything and keeps the hidden state the up path
    # hands to the layer that takes that branch's skip (the deep feature); a shallow step runs only the layers
    # outside the cut, with the deep feature of the last full step. The cut falls between the layers of a diffusers
    # block — (resnet, attention, motion module) groups, each producing or taking one skip — and no library runs a
    # block's layers one at a time: diffusers' block forwards run all of theirs, and the DeepCache package gets
    # there by replacing every layer's forward with one that decides per call, from a timestep read back to the
    # host, whether to return a cached output (a sync per call, a Python-side branch no compiled graph can hold).
    # So the layers are stepped here, with diffusers' own calls in diffusers' order, for the blocks of
    # UNet2DConditionModel and UNetMotionModel (`check_pieces` refuses what they do not restate).

    @property
    def compiled(self) -> bool:
        """Whether `compile()` compiled the inner model (torch keeps the compiled call on the module)."""
        return getattr(self.unet, "_compiled_call_impl", None) is not None

    @property
    def branches(self) -> int:
        """How many skip branches the inner model has: the tensors its down path hands to its up path (diffusers'
        `down_block_res_samples`), 0 = conv_in's output (the outermost) … branches − 1 (the deepest, the last down
        block's output)."""
        return 1 + sum(len(b.resnets) + (b.downsamplers is not None) for b in self.unet.down_blocks)

    def check_pieces(self) -> None:
        """Refuse an inner model whose forward does something `cut_full` / `cut_shallow` do not restate (they would
        leave it out silently): class or added embeddings, an input-centring step, FreeU."""
        config = self.unet.config
        extras = [k for k in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type", "center_input_sample")
                  if config.get(k)]
        if any(getattr(block, "s1", None) for block in self.unet.up_blocks):
            extras.append("FreeU")
        if extras:
            raise NotImplementedError(f"the UNet's forward in pieces does not restate {', '.join(extras)}")

    def call_in_pieces(self, piece: Callable, sample: torch.Tensor, timestep, context: torch.Tensor,
                       real: torch.Tensor | None, *args):
        """`piece(sample, timestep, context (B·F, 50, 384), *args)` — `cut_full` or `cut_shallow`, maybe compiled —
        under the clip semantics `forward` gives the inner model: the frame limit, the frame mask written before
        (outside whatever compiled `piece`), the context one window per frame, the SDPA kernels."""
        f = sample.shape[1]
        self.check_frames(f)
        self.frame_mask.set(real, f)
        context = context.flatten(0, 1)
        if self.sdpa_backends:
            from torch.nn.attention import sdpa_kernel

            with sdpa_kernel(self.sdpa_backends):
                return piece(sample, timestep, context, *args)
        return piece(sample, timestep, context, *args)

    def cut_full(self, sample: torch.Tensor, timestep, context: torch.Tensor,
                 branch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole inner model on (B, F, 13, h, w) clips → (eps (B, F, 4, h, w), the deep feature at `branch`:
        the (B·F, C, h', w') hidden state entering the up layer that takes skip `branch`). Its eps is `forward`'s."""
        b, f = sample.shape[:2]
        x, emb = self._embed(sample, timestep)
        skips = self._down(x, emb, context, f, self.branches)
        h = skips[-1]  # the down path's output is its last skip
        mid = self.unet.mid_block
        if mid is not None:
            kwargs = dict(encoder_hidden_states=context) if getattr(mid, "has_cross_attention", False) else {}
            if hasattr(mid, "motion_modules"):
                kwargs["num_frames"] = f
            h = mid(h, emb, **kwargs)
        h, deep = self._up(h, emb, context, f, skips, branch, shallow=False)
        return self._out(h, b, f), deep

    def cut_shallow(self, sample: torch.Tensor, timestep, context: torch.Tensor, branch: int,
                    deep: torch.Tensor) -> torch.Tensor:
        """Only the layers outside the cut: the time embedding, conv_in, the down path as far as skip `branch`, then
        the up path from the layer that takes it, entered with `deep` (a full call's deep feature) → eps."""
        b, f = sample.shape[:2]
        x, emb = self._embed(sample, timestep)
        skips = self._down(x, emb, context, f, branch + 1)
        h, _ = self._up(deep, emb, context, f, skips, branch, shallow=True)
        return self._out(h, b, f)

    def _embed(self, sample: torch.Tensor, timestep) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, 13, h, w) → (conv_in's (B·F, C, h, w), the time embedding per frame), as the inner model's forward
        computes them: the motion UNet embeds a timestep per clip and repeats it over the frames, the 2-D UNet one
        per frame (`per_frame`)."""
        unet, (b, f) = self.unet, sample.shape[:2]
        frames = sample.flatten(0, 1)  # the motion UNet's (B, C, F, h, w) → (B·F, C, h, w) is this, as a copy
        if self.temporal:
            t = timestep
            if not torch.is_tensor(t):
                from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device

                dtype = maybe_adjust_dtype_for_device(torch.float64 if isinstance(t, float) else torch.int64,
                                                      sample.device)
                t = torch.tensor([t], dtype=dtype, device=sample.device)
            elif t.ndim == 0:
                t = t[None].to(sample.device)
            emb = unet.time_embedding(unet.time_proj(t.expand(b)).to(dtype=unet.dtype), None)
            emb = emb.repeat_interleave(f, dim=0, output_size=emb.shape[0] * f)
        else:
            emb = unet.time_embedding(unet.get_time_embed(sample=frames, timestep=self.per_frame(timestep, f)), None)
            if unet.time_embed_act is not None:
                emb = unet.time_embed_act(emb)
        return unet.conv_in(frames), emb

    def _down(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, f: int,
              count: int) -> list[torch.Tensor]:
        """The down path's first `count` skips, conv_in's output `x` the first: each (resnet, attention, motion
        module) layer and each downsampler adds one."""
        skips = [x]
        for block in self.unet.down_blocks:
            attentions, motions = getattr(block, "attentions", None), getattr(block, "motion_modules", None)
            for i, resnet in enumerate(block.resnets):
                if len(skips) == count:
                    return skips
                x = resnet(x, emb)
                if attentions is not None:
                    x = attentions[i](x, encoder_hidden_states=context, return_dict=False)[0]
                if motions is not None:
                    x = motions[i](x, num_frames=f)
                skips.append(x)
            if block.downsamplers is not None:
                if len(skips) == count:
                    return skips
                for downsampler in block.downsamplers:
                    x = downsampler(x)
                skips.append(x)
        return skips

    def _up(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, f: int, skips: list[torch.Tensor],
            branch: int, shallow: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The up path. Up layer u (counted over the blocks' resnets) takes skip `branches − 1 − u`; the layer that
        takes skip `branch` is the cut. Full: every layer, and the hidden state entering the cut is returned as the
        deep feature. Shallow: `h` is that deep feature, and the layers before the cut (with their blocks'
        upsamplers) are not run."""
        unet, n = self.unet, self.branches
        cut = n - 1 - branch
        # diffusers passes upsamplers the next skip's size when the latent is not a multiple of their total factor
        forward_size = any(s % 2 ** unet.num_upsamplers for s in skips[0].shape[-2:])
        deep, u = None, 0
        for i, block in enumerate(unet.up_blocks):
            layers = len(block.resnets)
            if shallow and u + layers <= cut:  # the whole block lies before the cut
                u += layers
                continue
            attentions, motions = getattr(block, "attentions", None), getattr(block, "motion_modules", None)
            for j, resnet in enumerate(block.resnets):
                if u == cut and not shallow:
                    deep = h
                if u >= cut or not shallow:
                    h = resnet(torch.cat([h, skips[n - 1 - u]], dim=1), emb)
                    if attentions is not None:
                        h = attentions[j](h, encoder_hidden_states=context, return_dict=False)[0]
                    if motions is not None:
                        h = motions[j](h, num_frames=f)
                u += 1
            if block.upsamplers is not None:
                size = skips[n - 1 - u].shape[2:] if forward_size and i < len(unet.up_blocks) - 1 else None
                for upsampler in block.upsamplers:
                    h = upsampler(h, size)
        return h, deep

    def _out(self, h: torch.Tensor, b: int, f: int) -> torch.Tensor:
        """The output head on (B·F, C, h, w) → eps (B, F, 4, h, w)."""
        unet = self.unet
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return unet.conv_out(h).unflatten(0, (b, f))


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
