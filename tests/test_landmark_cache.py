"""The landmark cache (face.cache): a clip's per-frame landmarks are computed once, read by later runs of the same
clip (keyed by its content, not its name), and a run whose landmarks are all cached needs no dlib model."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import write_video
from lipsync_lab.config import compose
from lipsync_lab.face.landmarks import LandmarkDetector
from lipsync_lab.media.demo import DemoSource
from lipsync_lab.run import run

FAST = ["batch_frames=4", "steps=1", "sink=none", "print_batches=false", "vae=tiny"]


def cached_run(clip, cache_dir, out, *extra):
    cfg = compose(["source=file", f"source.video={clip}", "face.cache=true", f"face.cache_dir={cache_dir}",
                   *FAST, *extra])
    summary = run(cfg, out)
    face = pd.read_parquet(out / "timings.parquet").query("stage == 'face'")
    with np.load(out / "crops.npz") as f:
        crops = f["crops"], f["frames"]
    return summary, face["landmarks_cached"].tolist(), crops


def test_second_run_reads_the_cache_and_gives_the_same_output(partial_face_clip, tmp_path):
    clip = shutil.copy(partial_face_clip, tmp_path / "clip.mp4")
    first, read_first, crops_first = cached_run(clip, tmp_path / "cache", tmp_path / "a")
    assert first["landmarks_cached_frames"] == 0 and read_first == [0, 0, 0]
    assert len(list((tmp_path / "cache").glob("sha256-*.npz"))) == 1
    second, read_second, crops_second = cached_run(clip, tmp_path / "cache", tmp_path / "b")
    assert second["landmarks_cached_frames"] == 10 and read_second == [4, 4, 2]  # every frame read, per batch
    assert np.array_equal(crops_first[1], crops_second[1]) and np.array_equal(crops_first[0], crops_second[0])


def test_a_partial_cache_resumes_tracking_where_it_ends(partial_face_clip, tmp_path):
    clip = shutil.copy(partial_face_clip, tmp_path / "clip.mp4")
    cached_run(clip, tmp_path / "cache", tmp_path / "short", "max_frames=6")   # caches frames 0–5
    resumed, read, crops = cached_run(clip, tmp_path / "cache", tmp_path / "resumed")
    assert resumed["landmarks_cached_frames"] == 6 and read == [4, 2, 0]
    _, _, reference = cached_run(clip, tmp_path / "fresh-cache", tmp_path / "reference")  # computed throughout
    assert np.array_equal(crops[1], reference[1]) and np.array_equal(crops[0], reference[0])


def test_another_clip_with_the_same_name_misses(partial_face_clip, tmp_path):
    clip = shutil.copy(partial_face_clip, tmp_path / "clip.mp4")
    cached_run(clip, tmp_path / "cache", tmp_path / "a")
    other = DemoSource(seconds=0.4, size=256, seed=1)  # the same face, moving otherwise
    write_video(clip, list(other.frames()), audio=other.audio)  # same path, other content
    summary, read, _ = cached_run(clip, tmp_path / "cache", tmp_path / "b")
    assert summary["landmarks_cached_frames"] == 0 and read == [0, 0, 0]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_fully_cached_clip_runs_without_dlib(partial_face_clip, tmp_path, monkeypatch):
    clip = shutil.copy(partial_face_clip, tmp_path / "clip.mp4")
    cached_run(clip, tmp_path / "cache", tmp_path / "a")

    def no_dlib(self):
        raise ModuleNotFoundError("No module named 'dlib'")

    monkeypatch.setattr(LandmarkDetector, "_models", no_dlib)
    summary, read, _ = cached_run(clip, tmp_path / "cache", tmp_path / "b")
    assert read == [4, 4, 2]
    with pytest.raises(ModuleNotFoundError):  # and without the cache the same run needs dlib
        run(compose(["source=file", f"source.video={clip}", *FAST]), tmp_path / "c")


def test_a_sweep_fills_the_cache_before_its_first_job(tmp_path):
    """Every job of a sweep reads the landmarks (none pays the one-off detection the others skip): the comparison's
    speed-ups stay about the axis swept."""
    from lipsync_lab.results import run_index
    from test_run import cli

    r = cli("-m", "steps=1,2", "max_frames=8", "batch_frames=4", "sink=none", "print_batches=false", "face.cache=true",
            f"face.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "8 frames computed before the sweep" in r.stdout + r.stderr
    runs = run_index(tmp_path / "sweep")
    for folder in runs["run_dir"]:
        face = pd.read_parquet(f"{folder}/timings.parquet").query("stage == 'face'")
        assert face["landmarks_cached"].sum() == 8
