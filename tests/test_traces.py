"""lipsync_lab.traces: self times, top operators and stage shares from Chrome traces — exact on hand-made events,
and read from a real torch.profiler trace (plain and gzipped, found from its run folder)."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from lipsync_lab.traces import (events_frame, find_trace, load_trace, profiled_span_ms, self_times, stage_shares,
                                top_operators, trace_run_folder)


def X(name, ts, dur, cat="cpu_op", tid=1):
    return dict(ph="X", cat=cat, name=name, ts=ts, dur=dur, pid=7, tid=tid)


EVENTS = [
    dict(ph="M", name="thread_name", pid=7, tid=1, args={"name": "main"}),  # metadata: ignored
    X("ProfilerStep#2", 0, 100, "user_annotation"),
    X("Facial preprocessing", 0, 20, "user_annotation"),
    X("aten::linear", 1, 10), X("aten::mm", 2, 8), X("aten::t", 10, 1),   # linear: self 10 − 8 − 1 = 1
    X("Diffusion inference", 20, 60, "user_annotation"),
    X("Denoising process", 20, 45, "user_annotation"),
    X("Decode and post-process", 65, 15, "user_annotation"),
    X("aten::mm", 21, 40),                                               # a sibling starts where one ends:
    X("aten::add", 61, 2), X("aten::add", 63, 2),                        # not nested in it
    X("Face postprocessing", 80, 20, "user_annotation"),
    X("aten::mm", 80, 5, tid=2),                                         # another thread: not nested in tid 1
    X("volta_sgemm", 30, 7, "kernel", tid=9), X("Memcpy HtoD", 40, 3, "gpu_memcpy", tid=9),
]


def test_self_time_subtracts_direct_children_on_the_same_thread_only():
    ops = events_frame(EVENTS)
    ops = ops[ops["cat"] == "cpu_op"].reset_index(drop=True)
    got = dict(zip(zip(ops["name"], ops["ts"]), self_times(ops)))
    assert got[("aten::linear", 1)] == 1 and got[("aten::mm", 2)] == 8 and got[("aten::t", 10)] == 1
    assert got[("aten::mm", 21)] == 40 and got[("aten::add", 61)] == 2 and got[("aten::add", 63)] == 2
    assert got[("aten::mm", 80)] == 5


def test_top_operators_sum_self_time_per_name():
    top = top_operators(EVENTS, n=2)
    assert list(top["name"]) == ["aten::mm", "aten::add"]
    mm = top.iloc[0]
    assert (mm["calls"], mm["self_ms"], mm["total_ms"]) == (3, pytest.approx(0.053), pytest.approx(0.053))
    assert top["self_share"].iloc[0] == pytest.approx(53 / (1 + 53 + 1 + 4))
    gpu = top_operators(EVENTS, device="gpu")
    assert list(gpu["name"]) == ["volta_sgemm", "Memcpy HtoD"] and gpu["self_ms"].tolist() == [0.007, 0.003]
    with pytest.raises(ValueError):
        top_operators(EVENTS, device="tpu")


def test_stage_shares_top_level_and_within_the_parent():
    shares = stage_shares(EVENTS).set_index("stage")
    assert list(shares.index) == ["face", "diffusion", "denoise", "decode", "restore"]  # design order, present only
    assert shares.loc["face", "share"] == pytest.approx(0.2)
    assert shares.loc["diffusion", "share"] == pytest.approx(0.6)
    assert shares.loc["denoise", "share"] == pytest.approx(45 / 60) and shares.loc["decode", "share"] == 0.25
    assert shares.loc[shares["parent"].isna(), "share"].sum() == pytest.approx(1.0)
    assert stage_shares(EVENTS, device="gpu").empty
    assert profiled_span_ms(EVENTS) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def real_trace(tmp_path_factory):
    """A torch.profiler trace of stage-named ranges, laid out as a profiled run folder: trace/<x>.pt.trace.json
    and trace.json."""
    run = tmp_path_factory.mktemp("run")
    (run / "trace").mkdir()
    x = torch.randn(96, 96)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("Facial preprocessing"):
            y = torch.nn.functional.linear(x, x)
        with record_function("Diffusion inference"):
            with record_function("Denoising process"):
                for _ in range(3):
                    y = (y @ x).relu()
    prof.export_chrome_trace(str(run / "trace" / "worker.1.pt.trace.json"))
    shutil.copy(run / "trace" / "worker.1.pt.trace.json", run / "trace.json")
    return run


def test_a_real_trace_reads_from_its_run_folder_plain_or_gzipped(real_trace, tmp_path):
    trace = find_trace(real_trace)
    assert trace.name in ("trace.json", "worker.1.pt.trace.json") and trace_run_folder(trace) == real_trace
    events = events_frame(load_trace(real_trace))
    top = top_operators(events, n=5)
    assert "aten::mm" in set(top["name"]) and (top["self_ms"] > 0).all()
    assert np.all(np.diff(top["self_ms"]) <= 0)
    assert (top["self_ms"] <= top["total_ms"] + 1e-9).all()
    shares = stage_shares(events).set_index("stage")
    assert set(shares.index) == {"face", "diffusion", "denoise"}
    # structure, not speed: the top-level shares add up, the nested range lies within its parent
    assert shares.loc[["face", "diffusion"], "share"].sum() == pytest.approx(1.0)
    assert 0 < shares.loc["denoise", "ms"] <= shares.loc["diffusion", "ms"] and shares.loc["denoise", "calls"] == 1

    gz = tmp_path / "t.pt.trace.json.gz"
    with gzip.open(gz, "wt") as f:
        json.dump(json.loads(trace.read_text()), f)
    assert len(load_trace(gz)) == len(load_trace(trace))
    bare = tmp_path / "bare.json"  # the format's other form: a bare list of events
    bare.write_text(json.dumps(json.loads(trace.read_text())["traceEvents"]))
    assert len(load_trace(bare)) == len(load_trace(trace))


def test_a_folder_without_a_trace_says_so(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="profile=true"):
        find_trace(tmp_path)
