"""Records on disk in bounded chunks (recording.py), memory per stage (timing.MemoryProbe) and in the summary."""

from __future__ import annotations

import gc
import json
import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

from lipsync_lab import timing
from lipsync_lab.recording import ChunkedRecorder, MemoryRecorder, read_partial
from lipsync_lab.timing import BatchTimer, MemoryProbe


def fake_batch(i: int, clock: list[float]) -> tuple[list[dict], dict]:
    """One batch's records as the stream writes them, on a fake clock (no sleeping, no models)."""
    timer = BatchTimer(i, 8, warmup=i == 0, clock=lambda: clock[0], run_start=0.0)
    for key in ("face", "audio", "diffusion", "restore", "write"):
        with timer.stage(key):
            clock[0] += 0.01
    batch = dict(run_id="t", batch=i, first_frame=8 * i, frames=8, warmup=i == 0, paced=True,
                 arrived_s=0.32 * (i + 1), waited_s=0.0, started_s=clock[0] - 0.05, finished_s=clock[0] - 0.01,
                 written_s=clock[0], skipped="", rss_mb=100.0)
    return timer.rows("t"), batch


def test_recorder_memory_stays_bounded_over_100k_batches(tmp_path):
    recorder, clock = ChunkedRecorder(tmp_path, chunk_batches=1000), [0.0]
    gc.collect()
    tracemalloc.start()
    try:
        held = []
        for i in range(100_000):
            recorder.add(*fake_batch(i, clock))
            if i % 10_000 == 9_999:
                gc.collect()
                held.append(tracemalloc.get_traced_memory()[0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # at most one chunk held: what is held after 100k batches is what was held after 10k, and the peak is a chunk's
    # size (~5 MB of dicts for 1000 batches), not the 100k batches' (~500 MB held in lists)
    assert max(held) < min(held) + 2 * 2**20, [h / 2**20 for h in held]
    assert peak < 40 * 2**20, peak / 2**20
    assert len(list((tmp_path / "partial").glob("timings-*.parquet"))) == 100
    recorder.close()
    timings = pd.read_parquet(tmp_path / "timings.parquet", columns=["batch", "stage"])
    stream = pd.read_parquet(tmp_path / "stream.parquet")
    assert len(stream) == 100_000 and stream["batch"].tolist() == list(range(100_000))
    assert len(timings) == 100_000 * 5 and not (tmp_path / "partial").exists()


def test_chunked_records_equal_the_in_memory_ones_and_survive_a_crash(tmp_path):
    chunked, memory, clock = ChunkedRecorder(tmp_path, chunk_batches=3), MemoryRecorder(), [0.0]
    for i in range(10):
        rows, batch = fake_batch(i, clock)
        chunked.add(rows, batch)
        memory.add(rows, batch)
    # a crash now (no close): the three full chunks are on disk, the last batch held in memory is lost
    timings, stream = read_partial(tmp_path)
    assert stream["batch"].tolist() == list(range(9)) and set(timings["batch"]) == set(range(9))
    chunked.close()
    pd.testing.assert_frame_equal(chunked.timings(), memory.timings())
    pd.testing.assert_frame_equal(chunked.stream(), memory.stream())


class FakeAllocator:
    """torch.cuda's peak-memory counters, driven by hand: `use(mb)` allocates (or frees, negative)."""

    def __init__(self):
        self.now = self.peak = 0.0

    def use(self, mb: float) -> None:
        self.now += mb
        self.peak = max(self.peak, self.now)

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak * timing.MB)
        monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 2 * self.peak * timing.MB)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: setattr(self, "peak", self.now))
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)


def test_each_stage_gets_its_own_peak_and_nested_stages_keep_their_parents(monkeypatch):
    alloc = FakeAllocator()
    alloc.install(monkeypatch)
    alloc.use(100)  # the models
    timer = BatchTimer(0, 8, warmup=False, device=torch.device("cuda", 0), sync=False,
                       memory=MemoryProbe(torch.device("cuda", 0)))
    with timer.stage("face"):
        alloc.use(50)
        alloc.use(-50)
    with timer.stage("diffusion"):
        with timer.stage("mask_latents"):
            alloc.use(300)   # a peak inside the first sub-stage
            alloc.use(-300)
        with timer.stage("denoise"):
            alloc.use(120)
            alloc.use(-120)
    peaks = {k: m["peak_allocated_mb"] for k, m in timer.memories.items()}
    assert peaks == {"face": 150, "mask_latents": 400, "denoise": 220, "diffusion": 400}
    assert timer.memories["diffusion"]["peak_reserved_mb"] == 800
    assert all(m["rss_mb"] > 0 for m in timer.memories.values())


def test_overlapping_stages_record_no_per_stage_device_peak(monkeypatch):
    alloc = FakeAllocator()
    alloc.install(monkeypatch)
    timer = BatchTimer(0, 8, warmup=False, device=torch.device("cuda", 0), sync=False,
                       memory=MemoryProbe(torch.device("cuda", 0), per_stage=False))
    with timer.stage("diffusion"):
        alloc.use(10)
    assert math.isnan(timer.memories["diffusion"]["peak_allocated_mb"]) and timer.memories["diffusion"]["rss_mb"] > 0


def test_a_cpu_run_records_resident_memory_and_says_so(tmp_path):
    from lipsync_lab.compare import compare, format_table
    from lipsync_lab.config import compose
    from lipsync_lab.run import run

    cfg = compose(["diffusion=passthrough", "max_frames=16", "batch_frames=8", "sink=none", "print_batches=false"])
    summary = run(cfg, tmp_path / "0_run")
    memory = summary["memory"]
    assert memory["measured"].startswith("resident memory (RSS) only")
    assert memory["rss_peak_mb"] >= memory["rss_after_build_mb"] > 0 and "model_mb" not in memory
    assert summary["stages"]["face"]["rss_mb"] > 0 and summary["stages"]["face"]["peak_allocated_mb"] is None
    timings = pd.read_parquet(tmp_path / "0_run" / "timings.parquet")
    assert {"peak_allocated_mb", "peak_reserved_mb", "rss_mb"} <= set(timings.columns)
    assert timings["rss_mb"].notna().all() and timings.loc[timings["stage"] != "denoise_step", "rss_mb"].gt(0).all()
    record = json.loads((tmp_path / "0_run" / "summary.json").read_text())
    assert record["status"] == "ok" and record["summary"]["memory"] == memory
    table = compare(tmp_path)
    assert table["rss_peak_mb"].iloc[0] == pytest.approx(memory["rss_peak_mb"])
    assert "RSS peak MB" in format_table(table) and "model MB" not in format_table(table)
    assert np.isfinite(table["rss_peak_mb"]).all()
