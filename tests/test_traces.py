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

from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.traces import (cuda_analyses, events_frame, find_trace, gpu_trace, load_trace, operator_diff,
                                profiled_span_ms, self_times, stage_diff, stage_operators, stage_shares,
                                stage_timeline, top_operators, trace_run_folder)


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


def test_stage_timeline_and_operators_per_stage_on_hand_made_events():
    timeline = stage_timeline(EVENTS)
    # the stage ranges only (not ProfilerStep), from the first event, on their thread
    assert list(timeline["label"]) == ["Facial preprocessing", "Diffusion inference", "Denoising process",
                                       "Decode and post-process", "Face postprocessing"]
    assert set(timeline["lane"]) == {"thread 1"}
    assert timeline.loc[2, ["start_ms", "end_ms", "parent"]].tolist() == [0.02, 0.065, "diffusion"]
    gpu = stage_timeline(EVENTS, device="gpu")
    assert list(gpu["stage"]) == ["kernel", "gpu_memcpy"] and set(gpu["lane"]) == {"stream 9"}
    ops = stage_operators(EVENTS, n=None).set_index(["stage", "name"])
    # innermost range: the mm at 21 is inside "Denoising process", not counted for diffusion
    assert ops.loc[("denoise", "aten::mm"), "self_ms"] == pytest.approx(0.040)
    assert ops.loc[("face", "aten::linear"), "self_ms"] == pytest.approx(0.001)
    assert ops.loc[("other", "aten::mm"), "calls"] == 1  # thread 2 has no stage range
    assert ops.loc[("denoise", "aten::add"), "calls"] == 2 and "diffusion" not in ops.index.get_level_values(0)
    assert ops.groupby("stage")["share"].sum().tolist() == pytest.approx([1.0] * 3)
    top = stage_operators(EVENTS, n=1)
    assert list(top["stage"]) == ["face", "denoise", "other"] and list(top["name"]) == ["aten::mm"] * 3


def test_diff_of_two_hand_made_traces():
    slower = [dict(e, dur=e["dur"] * 3) if e.get("name") == "aten::mm" and e.get("tid") == 2 else e for e in EVENTS]
    slower.append(X("aten::relu", 100, 4, tid=2))  # an operator the baseline lacks
    ops = operator_diff(EVENTS, slower).set_index("name")
    assert list(ops.index[:2]) == ["aten::mm", "aten::relu"]
    assert ops.loc["aten::mm", "delta_ms"] == pytest.approx(0.010) and ops.loc["aten::mm", "ratio"] == pytest.approx(63 / 53)
    relu = ops.loc["aten::relu"]
    assert (relu["calls_before"], relu["calls_after"], relu["self_ms_after"]) == (0, 1, pytest.approx(0.004))
    assert np.isnan(relu["ratio"])
    assert ops.loc["aten::add", "delta_ms"] == 0
    stages = stage_diff(EVENTS, slower).set_index("stage")  # the slower op ran outside every stage range
    assert (stages["delta_ms"] == 0).all() and (stages["ratio"] == 1).all()
    longer = [dict(e, dur=30) if e.get("name") == "Facial preprocessing" else e for e in EVENTS]
    face = stage_diff(EVENTS, longer).set_index("stage").loc["face"]
    assert (face["ms_before"], face["ms_after"], face["delta_ms"]) == pytest.approx((0.020, 0.030, 0.010))


def test_the_diff_of_a_real_trace_against_itself_is_zero(real_trace):
    events = events_frame(load_trace(real_trace))
    stages, ops = stage_diff(events, events), operator_diff(events, events, n=None)
    assert set(stages["stage"]) == {"face", "diffusion", "denoise"} and len(ops) > 3
    assert (stages["delta_ms"] == 0).all() and (ops["delta_ms"] == 0).all()
    assert (stages["ms_before"] > 0).all() and (ops["calls_before"] == ops["calls_after"]).all()


# -- a CUDA-style trace with known kernel times, for HolisticTraceAnalysis ------------------------------------------
# per recorded batch (ProfilerStep#2 at 1000 µs, #3 at 2000 µs), on the GPU (pid 0): gemm_a [50, 150) and gemm_b
# [200, 400) on stream 7, a host-to-device copy [100, 250) on stream 8 — each launched from CPU thread 100 by a
# runtime call carrying the kernel's correlation id. Per batch: compute 300 µs, copy 150 µs, of which 100 µs overlap
# compute ([100, 150) and [200, 250)); the GPU is busy [50, 400) less the gap [150, 200) ∩ copy = 350 µs.
KERNELS = [("gemm_a", "kernel", 50, 100, 7), ("gemm_b", "kernel", 200, 200, 7),
           ("Memcpy HtoD (Pageable -> Device)", "gpu_memcpy", 100, 150, 8)]


def cuda_trace(path):
    def x(name, cat, ts, dur, pid, tid, **args):
        return dict(ph="X", cat=cat, name=name, ts=ts, dur=dur, pid=pid, tid=tid, args=args)

    events, correlation = [dict(ph="M", name="process_name", pid=0, tid=0, args={"name": "GPU 0"})], 1
    for step, t0 in ((2, 1000), (3, 2000)):
        events += [x(f"ProfilerStep#{step}", "user_annotation", t0, 900, 100, 100),
                   x("Diffusion inference", "user_annotation", t0 + 10, 800, 100, 100),
                   x("Diffusion inference", "gpu_user_annotation", t0 + 40, 400, 0, 7)]
        for i, (name, cat, start, dur, stream) in enumerate(KERNELS):
            launch = "cudaLaunchKernel" if cat == "kernel" else "cudaMemcpyAsync"
            events += [x(launch, "cuda_runtime", t0 + 20 + 5 * i, 4, 100, 100, correlation=correlation),
                       x(name, cat, t0 + start, dur, 0, stream, correlation=correlation, stream=stream, device=0)]
            correlation += 1
    path.write_text(json.dumps(dict(schemaVersion=1, deviceProperties=[dict(id=0, name="Test GPU")],
                                    traceEvents=events, displayTimeUnit="ms", baseTimeNanoseconds=0)))
    return path


def test_cuda_analyses_return_the_known_kernel_times(tmp_path):
    pytest.importorskip("hta")
    trace = cuda_trace(tmp_path / "gpu.pt.trace.json")  # no distributedInfo: a single-process run's trace has none
    assert gpu_trace(load_trace(trace))
    cuda = cuda_analyses(tmp_path)
    kernels = cuda["kernels"].set_index("name")["sum (us)"]
    assert kernels.to_dict() == {"gemm_a": 200, "gemm_b": 400, "Memcpy HtoD (Pageable -> Device)": 300}
    types = cuda["kernel_types"].set_index("kernel_type")["sum"]
    assert types.to_dict() == {"COMPUTATION": 400, "COMPUTATION overlapping MEMORY": 200, "MEMORY": 100}
    overlap = cuda["overlap"].iloc[0]
    assert (overlap["transfer_us"], overlap["overlapped_us"]) == (300, 200)
    assert overlap["overlapped_share"] == pytest.approx(2 / 3)
    # idle: the span from the first kernel's start to the last one's end (1050 → 2400 µs) less the busy 2 × 350
    temporal = cuda["temporal"].iloc[0]
    assert (temporal["kernel_time(us)"], temporal["idle_time(us)"]) == (1350, 650)
    assert (temporal["compute_time(us)"], temporal["non_compute_time(us)"]) == (600, 100)
    idle = cuda["idle"].groupby("stream")["idle_time"].sum()
    # per stream, within its own span: stream 7 1050 → 2400 µs less 600 busy, stream 8 1100 → 2250 less 300
    assert idle.to_dict() == {7: 1350 - 600, 8: 1150 - 300}
    launch = cuda["launch"].sort_values("correlation")
    assert launch["gpu_duration"].tolist() == [100, 200, 150] * 2 and (launch["cpu_duration"] == 4).all()
    assert launch["launch_delay"].tolist()[:3] == [50 - 24, 200 - 29, 100 - 34]  # kernel start − call end
    timeline = stage_timeline(load_trace(trace), device="gpu")
    assert set(timeline["lane"]) == {"stream 7", "stream 8"}
    assert timeline.loc[timeline["stage"] == "kernel", "dur_ms"].sum() == pytest.approx(0.6)

    from lipsync_lab.plots import cuda_review_plot, save_figure
    assert save_figure(cuda_review_plot(cuda), tmp_path, "cuda_review").stat().st_size > 1000


def test_cuda_analyses_of_a_cpu_trace_say_so_in_one_line(real_trace):
    with pytest.raises(LipsyncInputError, match="no GPU kernels in this trace") as e:
        cuda_analyses(real_trace)
    assert "\n" not in str(e.value)
