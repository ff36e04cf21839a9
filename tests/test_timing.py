"""The stage timer synchronises the device before every clock read; summaries leave warm-up batches out."""

from __future__ import annotations

import torch

from lipsync_lab.results import summarize, timings_frame
from lipsync_lab.timing import STAGES, BatchTimer


def test_cuda_stage_boundaries_synchronise(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    timer = BatchTimer(0, 8, warmup=False, device=torch.device("cuda", 0))
    with timer.stage("face"):
        pass
    with timer.step(999):
        pass
    assert len(calls) == 4  # before and after each timed region

    calls.clear()
    unsynced = BatchTimer(0, 8, warmup=False, device=torch.device("cuda", 0), sync=False)
    with unsynced.stage("face"):
        pass
    assert calls == []  # timing.sync=false reproduces the seed's unsynchronised clock


def fake_batch(index, scale, warmup):
    t = BatchTimer(index, 8, warmup=warmup)
    for key, _, _ in STAGES:
        t.seconds[key] = scale
    t.steps = [(999, scale / 2), (666, scale / 2)]
    return t


def test_report_is_the_seed_block():
    text = fake_batch(3, 0.25, False).report().splitlines()
    top_level = sum(1 for _, _, parent in STAGES if parent is None)
    assert text[0] == f"Batch 3 processing completed, total time: {0.25 * top_level:.4f} seconds"
    assert text[1] == "Step times:"
    labels = [line.strip().split(":")[0] for line in text[2:]]
    expected = [label for _, label, _ in STAGES]
    expected.insert(expected.index("Denoising process") + 1, "Average denoising per step")
    assert labels == expected
    assert "    Average denoising per step: 0.1250 seconds" in text


def test_summary_excludes_warmup_batches():
    rows = fake_batch(0, 100.0, True).rows("r") + fake_batch(1, 1.0, False).rows("r") + \
        fake_batch(2, 3.0, False).rows("r")
    s = summarize(timings_frame(rows))
    top_level = sum(1 for _, _, parent in STAGES if parent is None)
    assert s["steady_batches"] == 2 and not s["includes_warmup"]
    assert s["stages"]["face"]["median"] == 2.0
    assert s["batch_total_median"] == 2.0 * top_level  # parent rows only: sub-stages are not double counted
    assert s["fps"] == 16 / (4.0 * top_level)
    assert s["stages"]["denoise_step"]["n"] == 4
