"""`cache=deepcache`: DeepCache (Ma, Fang, Wang, arXiv 2312.00858) — shallow steps reuse the deep features of the
last full step.

A UNet's skip branches carry high-resolution detail from its down path straight to its up path, while the deep
path between them changes slowly from one denoising step to the next. DeepCache cuts the UNet at one skip branch m:
a full step runs the whole UNet and keeps the deep feature (what the up path hands to the layer that takes skip m);
a shallow step runs only the outer layers — the time embedding, conv_in, the down path as far as skip m, then the up
path from the layer that takes it, entered with the kept feature. Every `interval`-th step (0, interval, 2·interval,
… of a batch) is full, the others shallow: upstream LatentSync runs `DeepCacheSDHelper` with `cache_interval=3,
cache_branch_id=0`, this option's defaults.

`branch` numbers the skip branches in diffusers' order (`down_block_res_samples`): 0 = conv_in's output, the
outermost (the cheapest shallow step, which runs only conv_in, the last up layer and the output head), 1, 2, … one
per (resnet, attention, motion module) layer and per downsampler of the down blocks, to `LatentSyncUNet.branches`
− 1. For LatentSync's UNets (two layers and a downsampler per down block) this is the DeepCache package's
`cache_branch_id` (block · 3 + layer); for other layer counts the package's id for branch s is 3·(s // P) + s % P,
P = skips per down block (the tiny model: P = 2, so branches 0, 1, 2, 3 are its ids 0, 1, 3, 4).

Unlike the package, nothing is read back from the device: the kind of a step comes from its index in the batch, and
the full and the shallow call are each one fixed-shape callable (`LatentSyncUNet.cut_full` / `cut_shallow`). When
the UNet is compiled (compile=unet|unet_vae) both are compiled the same way, at their first call — the warm-up
batch's first and second step — and a CUDA-graph replay cannot overwrite the kept feature: it is a copy.
"""

from __future__ import annotations

import torch

from lipsync_lab.diffusion.steps import UNetCall
from lipsync_lab.errors import LipsyncInputError


class DeepCache:
    """`cache=deepcache`: a full step every `interval` steps, shallow steps cut at skip `branch` between them."""

    def __init__(self, interval: int = 3, branch: int = 0, compile_mode: str = "default",
                 compile_fullgraph: bool = False):
        self.interval, self.branch = int(interval), int(branch)
        if self.interval < 1:
            raise LipsyncInputError(f"cache.interval={interval}", "expects an integer ≥ 1")
        if self.branch < 0:
            raise LipsyncInputError(f"cache.branch={branch}", "expects an integer ≥ 0")
        # the compile group's settings (conf/cache/deepcache.yaml reads them), used when the UNet is compiled
        self.compile_kwargs = dict(mode=None if compile_mode == "default" else compile_mode,
                                   fullgraph=bool(compile_fullgraph), dynamic=False)
        self.deep: torch.Tensor | None = None  # (clips·F, C, h', w'): the last full step's deep feature
        self._clips = 0                        # how many clips it holds
        self._unet = None                      # the UNet the callables below are for
        self._full = self._shallow = None
        self._compiled = False

    def begin(self) -> None:
        self.deep, self._clips = None, 0  # a batch's first step is full: nothing carries over between batches

    def kind(self, step: int) -> str:
        return "full" if step % self.interval == 0 else "shallow"

    def call(self, unet, kind: str) -> UNetCall:
        if unet is not self._unet:
            self._bind(unet)
        if kind == "full":
            return self._call_full
        if kind == "shallow":
            return self._call_shallow
        raise ValueError(f"cache=deepcache has no {kind!r} call")

    def on_step_end(self, stage, step: int, timestep, kwargs: dict) -> dict:
        return kwargs

    # -- the two callables ------------------------------------------------------------------------------------
    def _bind(self, unet) -> None:
        """The full and the shallow piece of `unet`, compiled when its inner model is (never a shape-only copy on
        the meta device, which flops.py counts eagerly)."""
        unet.check_pieces()
        if self.branch >= unet.branches:
            raise LipsyncInputError(f"cache.branch={self.branch}", f"this UNet has {unet.branches} skip branches "
                                                                   f"(0 … {unet.branches - 1})")
        full, shallow = unet.cut_full, unet.cut_shallow
        self._compiled = unet.compiled
        if self._compiled:
            full, shallow = torch.compile(full, **self.compile_kwargs), torch.compile(shallow, **self.compile_kwargs)
        self._unet, self._full, self._shallow = unet, full, shallow
        self.deep, self._clips = None, 0

    def _call_full(self, sample: torch.Tensor, timestep, context: torch.Tensor,
                   real: torch.Tensor | None = None) -> torch.Tensor:
        eps, deep = self._unet.call_in_pieces(self._full, sample, timestep, context, real, self.branch)
        # a compiled callable under CUDA graphs returns buffers its next replay overwrites: keep a copy (eager
        # outputs are fresh tensors already)
        self.deep = deep.clone() if self._compiled else deep
        self._clips = sample.shape[0]
        return eps

    def _call_shallow(self, sample: torch.Tensor, timestep, context: torch.Tensor,
                      real: torch.Tensor | None = None) -> torch.Tensor:
        clips = sample.shape[0]
        if self.deep is None:
            raise RuntimeError("cache=deepcache: a shallow step before this batch's first full step")
        deep = self.deep
        if clips != self._clips:
            # A guidance variant that evaluates fewer branches on some steps (residual_once, cfg_cache) keeps the
            # trailing ones, the audio clip of [null audio | audio] (steps.py's order): those clips of the deep
            # feature serve it. More clips than the full step ran cannot be served.
            if clips > self._clips:
                raise LipsyncInputError("cache=deepcache", f"a shallow step on {clips} clips after a full step on "
                                                           f"{self._clips}: the deep feature has none for the others "
                                                           f"(the guidance evaluates more branches here than at the "
                                                           f"last full step, e.g. guidance=cfg_cache with full-CFG "
                                                           f"steps that are not DeepCache's full steps)")
            deep = deep.unflatten(0, (self._clips, -1))[-clips:].flatten(0, 1)
        return self._unet.call_in_pieces(self._shallow, sample, timestep, context, real, self.branch, deep)
