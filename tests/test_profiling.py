"""profile=true: a bounded torch.profiler schedule over steady-state batches writes a trace with every stage's range,
in TensorBoard's layout (served by torch-tb-profiler) and as a Chrome trace; other threads' ops are recorded."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings

import pandas as pd
import pytest
import torch

from lipsync_lab.compare import compare, format_table
from lipsync_lab.config import run_config
from lipsync_lab.plots import save_figure, stage_operators_plot, stage_timeline_plot, trace_diff_plot
from lipsync_lab.profiling import CHROME_TRACE, TRACE_DIR, StreamProfiler
from lipsync_lab.traces import (events_frame, gpu_trace, load_trace, operator_diff, stage_diff, stage_operators,
                                stage_timeline)
from lipsync_lab.timing import LABELS, STAGES, STEP_RANGE

# 4 batches: batch 0 is the run's warm-up (never profiled), 1 the profiler's warm-up, 2 and 3 recorded
PROFILED = ["max_frames=16", "batch_frames=4", "steps=1", "sink=none", "print_batches=false", "warmup_batches=1",
            "save_crops=0", "profile=true", "profiler.wait=0", "profiler.warmup=1", "profiler.active=2"]


def annotations(path) -> dict[str, set]:
    """record_function range name → the thread ids it was recorded on."""
    out: dict[str, set] = {}
    for e in json.loads(path.read_text())["traceEvents"]:
        if e.get("cat") == "user_annotation":
            out.setdefault(e["name"], set()).add(e.get("tid"))
    return out


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("profiled")
    return run_dir, run_config(PROFILED, run_dir)


def test_a_profiled_run_traces_its_steady_batches_with_every_stage_range(profiled_run):
    run_dir, summary = profiled_run
    trace = summary["trace"]
    assert trace["batches"] == [2, 3]  # the warm-up batch and the profiler's own warm-up left out
    tb_files = list((run_dir / TRACE_DIR).glob("*.pt.trace.json"))
    assert len(tb_files) == 1 and trace["tensorboard_file"] == str(tb_files[0])
    chrome = run_dir / CHROME_TRACE
    assert trace["chrome"] == str(chrome) and chrome.read_bytes() == tb_files[0].read_bytes()
    names = annotations(chrome)
    assert {"ProfilerStep#2", "ProfilerStep#3"} <= set(names)
    assert not any(n.startswith(("ProfilerStep#0", "ProfilerStep#1")) for n in names)
    # every stage that ran in the recorded batches (top-level and the diffusion sub-stages) has its range
    df = pd.read_parquet(run_dir / "timings.parquet")
    ran = set(df.loc[df["batch"].isin([2, 3]) & (df["stage"] != "denoise_step"), "stage"])
    assert {k for k, _, parent in STAGES if parent is None} <= ran
    ranged = {LABELS[k] for k in ran}  # "read" too: the batcher marks each frame's decoding with its range
    assert ranged <= set(names), ranged - set(names)
    assert STEP_RANGE in names
    assert "aten::mkldnn_convolution" in (run_dir / "profile_ops.txt").read_text() or \
        "aten::convolution" in (run_dir / "profile_ops.txt").read_text()


def test_a_profiled_run_reports_achieved_compute(profiled_run):
    run_dir, summary = profiled_run
    assert summary["flops"]["denoise"] == summary["flops"]["denoise_step"]  # steps=1
    denoise = summary["stages"]["denoise"]
    assert denoise["tflops"] == pytest.approx(summary["flops"]["denoise"] / denoise["median"] / 1e12)
    assert denoise["peak_fraction"] is None and summary["peak_tflops"] is None  # CPU: no peak, never guessed
    assert "tflops" not in summary["stages"]["face"]  # no model, no FLOPs counted
    table = format_table(compare(run_dir))
    assert "denoise TFLOP/s" in table and "decode TFLOP/s" in table


def test_the_offline_review_reads_a_profiled_runs_trace_and_writes_its_figures(profiled_run, tmp_path):
    run_dir, _ = profiled_run
    events = events_frame(load_trace(run_dir))
    assert not gpu_trace(events)  # a CPU run: the CUDA analyses do not apply
    timeline = stage_timeline(events)
    # both recorded batches' top-level stages (read: one range per frame), sub-stages inside diffusion
    per_stage = timeline.groupby("stage").size()
    assert per_stage[["face", "audio", "diffusion", "restore", "write", "denoise", "decode"]].eq(2).all()
    assert (timeline["start_ms"] >= 0).all() and (timeline["end_ms"] >= timeline["start_ms"]).all()
    denoise = timeline[timeline["stage"] == "denoise"].iloc[0]
    diffusion = timeline[(timeline["stage"] == "diffusion") & (timeline["start_ms"] <= denoise["start_ms"])].iloc[-1]
    assert diffusion["start_ms"] <= denoise["start_ms"] and denoise["end_ms"] <= diffusion["end_ms"]
    ops = stage_operators(events, n=3)
    # face: dlib and cv2 run outside torch (no operators in its range)
    assert {"audio", "denoise", "decode"} <= set(ops["stage"]) and (ops["self_ms"] > 0).all()
    assert ops.groupby("stage").size().max() <= 3
    # the UNet's convolutions run in denoise, the VAE decoder's in decode: each stage has its own operators
    assert ops.loc[ops["stage"] == "denoise", "name"].str.startswith("aten::").all()
    stages, operators = stage_diff(events, events), operator_diff(events, events)
    assert (stages["delta_ms"] == 0).all() and (operators["delta_ms"] == 0).all() and len(operators) == 20
    for name, fig in (("stage_timeline", stage_timeline_plot(timeline)), ("stage_operators", stage_operators_plot(ops)),
                      ("trace_diff", trace_diff_plot(stages, operators))):
        assert save_figure(fig, tmp_path, name).stat().st_size > 1000


def test_the_pipelined_executors_timeline_shows_its_stage_threads(tmp_path):
    run_config([*PROFILED, "executor=pipelined"], tmp_path)
    timeline = stage_timeline(load_trace(tmp_path))
    threads = timeline.groupby("stage")["lane"].agg(set)
    # each stage on its own thread. The profiler steps when a batch is written, so the recorded window holds the
    # writes of batches 2–3 and, on the worker threads, whatever ran meanwhile: diffusion (the slowest stage) and
    # restore of the batches in flight; face and audio, faster, ran ahead of the window and are not in it
    assert len(set.union(*threads[["diffusion", "restore", "write"]])) == 3, threads
    assert threads["denoise"] == threads["diffusion"]  # a sub-stage runs in its parent's thread
    # overlap: some stage range starts before another thread's range of the earlier batch has ended
    starts = timeline.sort_values("start_ms")
    top = starts[starts["parent"].isna()]
    assert any((top["start_ms"].iloc[i + 1] < top["end_ms"].iloc[: i + 1].max()) and
               top["lane"].iloc[i + 1] != top["lane"].iloc[i] for i in range(len(top) - 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_profiler_plugin_lists_the_profiled_run(profiled_run):
    pytest.importorskip("tensorboard")
    pytest.importorskip("torch_tb_profiler")
    run_dir, _ = profiled_run
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/pytorch_profiler/runs"
        deadline, runs = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, "tensorboard exited"
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    runs = json.loads(r.read())
                if runs.get("runs") and not runs.get("loading"):
                    break
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        # the run is the folder holding the trace files, relative to --logdir
        assert runs is not None and runs["runs"] == [TRACE_DIR], runs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _threaded_stream(profiler: StreamProfiler, batches: int) -> None:
    """A stand-in for the pipelined executor: a worker thread, started before any recording, does each batch's
    work inside a stage range; the calling thread steps the profiler per finished batch."""
    todo, done = [threading.Event() for _ in range(batches)], [threading.Event() for _ in range(batches)]

    def worker():
        for i in range(batches):
            todo[i].wait()
            with torch.profiler.record_function("Diffusion inference"):
                torch.mm(torch.ones(32, 32), torch.ones(32, 32))
            done[i].set()

    thread = threading.Thread(target=worker)
    thread.start()
    with profiler:
        for i in range(batches):
            todo[i].set()
            done[i].wait()
            profiler.step()
    thread.join()


@pytest.mark.parametrize("all_threads", [True, False])
def test_other_threads_ops_are_recorded_with_all_threads(tmp_path, all_threads):
    profiler = StreamProfiler(dict(wait=0, warmup=1, active=2, all_threads=all_threads), tmp_path, "cpu", "t")
    _threaded_stream(profiler, 4)
    names = annotations(tmp_path / CHROME_TRACE)
    assert profiler.paths()["batches"] == [1, 2]
    # without profile_all_threads a thread that existed before the recording started is invisible: the reason
    # the run turns it on (its pipelined executor's stage workers)
    assert ("Diffusion inference" in names) == all_threads


def test_disabled_profiler_is_a_no_op_and_a_short_stream_says_so(tmp_path, caplog):
    off = StreamProfiler(None, tmp_path / "off", "cpu", enabled=False)
    with off:
        off.step()
    assert off.paths() is None and not (tmp_path / "off").exists()
    short = StreamProfiler(dict(wait=0, warmup=1, active=2), tmp_path / "short", "cpu", skip_first=3)
    _threaded_stream(short, 2)  # ends before the first recorded batch (3 + 0 + 1 = 4)
    assert short.paths()["batches"] == [] and not (tmp_path / "short" / CHROME_TRACE).exists()
    assert "no batch was recorded" in caplog.text
    with pytest.raises(ValueError, match="unknown profiler setting"):
        StreamProfiler(dict(activ=2), tmp_path, "cpu")


def test_memory_profiling_writes_the_memory_timeline(tmp_path):
    profiler = StreamProfiler(dict(wait=0, warmup=1, active=1, memory=True), tmp_path, "cpu", "m")
    with warnings.catch_warnings():  # torch deprecates the timeline (for CUDA's allocator history) but ships it
        warnings.simplefilter("ignore", FutureWarning)
        _threaded_stream(profiler, 2)
    assert profiler.paths()["memory_timeline"] == str(tmp_path / "memory_timeline.html")
    assert (tmp_path / "memory_timeline.html").stat().st_size > 1000
