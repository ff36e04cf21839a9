"""End to end: the composed real config, shrunk, streams real media into an mp4 + parquet; the CLI; sweeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import av
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, SYNTHETIC_SIZE, write_video
from lipsync_lab.config import compose
from lipsync_lab.media.file import FileSource
from lipsync_lab.media.source import iter_batches
from lipsync_lab.results import collect_runs
from lipsync_lab.build import build_pipeline
from lipsync_lab.run import run
from lipsync_lab.timing import LABELS, STAGES, BatchTimer

FAST = ["steps=2", "print_batches=false"]


def test_real_clip_end_to_end(tmp_path, demo_video, demo_audio):
    cfg = compose(["source=file", f"source.video={demo_video}", f"source.audio={demo_audio}", "max_frames=12",
                   "batch_frames=8", *FAST])
    summary = run(cfg, tmp_path)

    with av.open(str(tmp_path / "output.mp4")) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 12
        assert (v.width, v.height) == (1080, 1920) and v.average_rate == 25
        assert abs(float(a.duration * a.time_base) - 12 / 25) < 0.03
    # the mouth was regenerated (random weights), the rest of the frame is the input's (up to H.264)
    src = list(FileSource(str(demo_video), str(demo_audio), max_frames=12).frames())
    assert np.abs(frames[0].astype(int) - src[0]).mean() < 3.0

    df = pd.read_parquet(tmp_path / "timings.parquet")
    assert set(df["label"]) == set(LABELS.values())  # exactly the design's labels, incl. the per-step rows
    assert set(df["stage"]) == {k for k, _, _ in STAGES} | {"denoise_step"}
    assert df["batch"].nunique() == 2 and df.loc[df["batch"] == 0, "warmup"].all()
    assert (df.loc[df["stage"] == "denoise_step"].groupby("batch").size() == 2).all()
    assert df.loc[df["stage"] == "diffusion", "face_frames"].tolist() == [8, 4]
    meta = json.loads((tmp_path / "summary.json").read_text())["meta"]
    assert meta["config"]["max_frames"] == 12 and meta["torch"] and meta["git_commit"]
    assert summary["frames"] == 12 and summary["fps"] > 0


def test_synthetic_clip_end_to_end_with_its_own_audio_track(tmp_path, synthetic_clip):
    """`source=file` with no audio file: the clip's own 44.1 kHz stereo track drives it and ends up in the output."""
    cfg = compose(["source=file", f"source.video={synthetic_clip}", "max_frames=12", "batch_frames=8", *FAST])
    summary = run(cfg, tmp_path)

    src = FileSource(str(synthetic_clip), max_frames=12)
    with av.open(str(tmp_path / "output.mp4")) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 12
        assert (v.width, v.height) == (SYNTHETIC_SIZE, SYNTHETIC_SIZE) and v.average_rate == 25
        assert abs(float(a.duration * a.time_base) - 12 / 25) < 0.03
    written = FileSource(str(tmp_path / "output.mp4")).audio
    assert np.corrcoef(written, src.audio)[0, 1] > 0.95  # the input's speech, not silence
    # the mouth regenerated (random weights: a few % of this 512² frame, ~5 % measured), the rest the input's up to
    # H.264 (the median pixel)
    inputs = list(src.frames())
    diff = np.abs(frames[0].astype(int) - inputs[0]).mean(axis=-1)
    assert np.median(diff) < 3.0 and 0.005 < (diff > 20).mean() < 0.15
    df = pd.read_parquet(tmp_path / "timings.parquet")
    assert df.loc[df["stage"] == "diffusion", "face_frames"].tolist() == [8, 4]
    assert summary["frames"] == 12


def test_frames_without_a_face_pass_through_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    frames = [np.full((120, 160, 3), 60 + 10 * i, np.uint8) for i in range(6)]
    frames[3][40:80, 60:100] = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    path = write_video(tmp_path / "noface.mp4", frames, audio=np.zeros(6 * 640, np.float32))
    cfg = compose(["source=file", f"source.video={path}", "batch_frames=4", *FAST])
    src = FileSource(str(path))
    pipeline = build_pipeline(cfg, src, device=torch.device("cpu"), dtype=torch.float32)
    for batch in iter_batches(src, 4, 6):
        timer = BatchTimer(batch.index, len(batch.frames), warmup=False)
        out = pipeline(batch, timer)
        assert all(o is f for o, f in zip(out.frames, batch.frames))  # the very same frames, untouched
        assert out.faces is None and out.face_indices == []
        assert timer.face_frames == 0 and timer.seconds["diffusion"] == 0.0  # skipped, and recorded as such
    summary = run(cfg, tmp_path / "run")
    assert summary["frames"] == 6 and summary["stages"]["diffusion"]["median"] == 0.0


def cli(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "lipsync_lab", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_prints_the_seed_block_and_a_summary(tmp_path):
    r = cli("max_frames=8", "batch_frames=4", "steps=1", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Batch 1 processing completed, total time:" in r.stdout and "Step times:" in r.stdout
    for label in LABELS.values():
        assert f"{label}: " in r.stdout, label
    assert "Summary over 1 steady-state batches" in r.stdout and "Throughput" in r.stdout
    for name in ("timings.parquet", "summary.json", "output.mp4", ".hydra/config.yaml"):
        assert (tmp_path / name).exists(), name


@pytest.mark.parametrize("args,words", [
    (["source=file", "source.video=/nonexistent/clip.mp4"], ["/nonexistent/clip.mp4", "not found"]),
    (["source=file"], ["source.video", "not set"]),
])
def test_cli_bad_input_is_one_line(tmp_path, args, words):
    r = cli(*args, f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), r.stderr
    assert "Traceback" not in r.stderr


def test_multirun_sweep_into_a_temp_folder(tmp_path):
    r = cli("-m", "steps=1,2", "max_frames=8", "batch_frames=4", "sink=none", "print_batches=false",
            f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    df = collect_runs(tmp_path)
    assert df["variant"].nunique() == 2
    steps = df[df["stage"] == "denoise_step"].groupby("variant")["step"].max().sort_values().tolist()
    assert steps == [0, 1]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_on_cpu(tmp_path, precision):
    summary = run(compose([f"precision={precision}", "max_frames=4", "batch_frames=4", "steps=1", "sink=none",
                           "print_batches=false"]), tmp_path)
    assert summary["frames"] == 4 and summary["includes_warmup"]  # one batch: it is the warm-up, and says so


def test_too_many_frames_for_a_motion_unet_is_refused_before_streaming(tmp_path):
    r = cli("model=latentsync_v15", "model.unet.block_out_channels=[32,64,64,64]", "model.unet.norm_num_groups=8",
            "model.unet.layers_per_block=1", "model.unet.motion_adapter.motion_norm_num_groups=8",
            "vae.arch.full.block_out_channels=[16,32,32,32]", "vae.arch.full.norm_num_groups=8", "batch_frames=25",
            f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: batch_frames: 25 frames per UNet call, but model=latentsync_v15 takes at most 24 (its temporal "
        "position table)"], r.stderr
