"""torch.compile variants on the tiny model (CPU, inductor): compiled ≈ eager, and nothing recompiles after the
warm-up — on a clip with a batch where only some frames have a face and a short last batch (static shapes: every
call padded to batch_frames, the padding kept out of the maths). Compiling costs about a minute here, so one
module-scoped pair of runs serves every test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lipsync_lab.build import build_diffusion
from lipsync_lab.compare import compare
from lipsync_lab.config import compose
from lipsync_lab.optimize import graphs_compiled
from lipsync_lab.run import run
from lipsync_lab.timing import BatchTimer

SETTINGS = ["vae=tiny", "batch_frames=4", "steps=1", "sink=none", "print_batches=false", "warmup_batches=1"]


@pytest.fixture(scope="module")
def runs(partial_face_clip, tmp_path_factory):
    out = {}
    for variant in ("none", "unet_vae"):
        folder = tmp_path_factory.mktemp(f"compile-{variant}")
        cfg = compose(["source=file", f"source.video={partial_face_clip}", f"compile={variant}", *SETTINGS])
        out[variant] = folder, run(cfg, folder)
    return out


def test_compiled_run_compiles_before_the_stream_and_never_after_warmup(runs):
    folder, summary = runs["unet_vae"]
    assert summary["compiled"] == ["unet", "vae"] and summary["compile_s"] > 0 and summary["static_shapes"]
    df = pd.read_parquet(folder / "timings.parquet")
    per_batch = df[df["stage"] == "diffusion"].set_index("batch")
    # the stream had a full batch, a batch with 2 of 4 faces, and a short last batch of 2 frames …
    assert per_batch["frames"].tolist() == [4, 4, 2] and per_batch["face_frames"].tolist() == [4, 2, 2]
    # … and none of them compiled anything after the warm-up batch
    assert summary["graphs_compiled_after_warmup"] == 0
    eager = runs["none"][1]
    assert eager["compiled"] == [] and eager["compile_s"] is None and eager["graphs_compiled_after_warmup"] is None
    # the compile report optimize() returned, as the run recorded it
    assert summary["compile"] == dict(targets=["unet", "vae"], mode="default", fullgraph=False, static_shapes=True,
                                      flags=dict(channels_last=False, fuse_qkv=False, sdpa=None),
                                      compile_s=summary["compile_s"], graphs_after_warmup=0)


def test_compiled_output_equals_eager_within_a_grey_level(runs):
    """Stated tolerance: the generated mouths differ by at most 2 grey levels anywhere, 0.05 on average (fp32
    kernels of another order of summation; eager runs short batches unpadded, compiled ones padded)."""
    table = compare([runs["none"][0], runs["unet_vae"][0]]).set_index("run")
    base, compiled = table.iloc[0], table.iloc[1]
    assert base["baseline"] and base["drift_mean_abs"] == 0 and base["psnr_db"] == np.inf
    assert compiled["drift_frames"] == 8  # every frame with a face
    assert compiled["drift_max_abs"] <= 2 and compiled["drift_mean_abs"] <= 0.05 and compiled["psnr_db"] > 50
    assert compiled["graphs_after_warmup"] == 0


def test_the_recompile_counter_sees_a_new_shape():
    """The check above could not fail if the counter missed recompilations: without static shapes, a batch of
    another size compiles again, and the counter says so."""
    cfg = compose(["compile=unet", "compile.static_shapes=false", *SETTINGS])
    diffusion = build_diffusion(cfg)
    faces = np.random.default_rng(0).integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    audio = torch.randn(4, 50, 384)
    diffusion(faces, audio, BatchTimer(0, 4, warmup=True))
    before = graphs_compiled()
    diffusion(faces[:2], audio[:2], BatchTimer(1, 2, warmup=False))
    assert graphs_compiled() > before
