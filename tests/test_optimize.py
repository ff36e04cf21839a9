"""The optimisation flags (optimize.py) change speed, not the function: each one alone gives the eager output
within rounding — on the tiny v1.0-shaped UNet and on a small v1.5 (motion modules: the masked temporal attention
must survive fused QKV projections)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from lipsync_lab.build import build_diffusion
from lipsync_lab.config import compose
from lipsync_lab.diffusion.latentsync import MaskedTemporalAttention
from lipsync_lab.timing import BatchTimer

SMALL_V15 = ["model=latentsync_v15", "model.unet.block_out_channels=[32,64]",
             "model.unet.down_block_types=[CrossAttnDownBlock2D,DownBlock2D]",
             "model.unet.up_block_types=[UpBlock2D,CrossAttnUpBlock2D]", "model.unet.norm_num_groups=8",
             "model.vae_size=small"]
BASE = ["batch_frames=4", "steps=1", "vae=kl"]


@functools.cache
def generate(overrides: tuple, frames=3):
    """The diffusion stage on fixed random faces and audio; `frames` < batch_frames exercises padding."""
    diffusion = build_diffusion(compose([*BASE, *overrides]))
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (frames, 256, 256, 3), dtype=np.uint8)
    audio = torch.from_numpy(rng.standard_normal((frames, 50, 384), dtype=np.float32))
    return diffusion, diffusion(faces, audio, BatchTimer(0, frames, warmup=False)).numpy()


@pytest.mark.parametrize("model", [[], SMALL_V15], ids=["tiny", "v15-small"])
@pytest.mark.parametrize("flag", ["optimize.channels_last=true", "optimize.fuse_qkv=true", "optimize.sdpa=math",
                                  "compile.static_shapes=true"])
def test_each_flag_keeps_the_output(model, flag):
    _, reference = generate(tuple(model))
    diffusion, out = generate((*model, flag))
    diff = np.abs(out.astype(int) - reference.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, (flag, diff.max(), diff.mean())
    if flag == "optimize.fuse_qkv=true":
        attns = [m for m in diffusion.unet.modules() if hasattr(m, "fused_projections")]
        assert attns and all(a.fused_projections for a in attns)
        temporal = [a for a in attns if isinstance(a.processor, MaskedTemporalAttention)]
        assert bool(temporal) == bool(model)  # the motion modules keep the masking processor after fusing


def test_an_unknown_sdpa_backend_is_refused():
    with pytest.raises(ValueError, match="optimize.sdpa='fastest': one of flash, efficient, cudnn, math or null"):
        build_diffusion(compose(["optimize.sdpa=fastest"]))
