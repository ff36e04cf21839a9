"""Reading a profiled run's trace (Chrome trace format, as torch.profiler writes it): the operators that take the
time and each pipeline stage's share of it.

A run with `profile=true` writes `trace/<worker>.<ns>.pt.trace.json` (TensorBoard's torch-tb-profiler layout) and
the same trace as `trace.json` (lipsync_lab/profiling.py). Either, gzipped or not, reads here; a run folder finds
its own. Times in a trace are microseconds; the tables here are in milliseconds.

Event kinds used (complete events, `"ph": "X"`):
  cpu_op              an ATen / torch operator call on a CPU thread; calls nest (aten::linear → aten::mm)
  user_annotation     a `record_function` range on a CPU thread: each stage of a batch is one, named by its printed
                      label (timing.BatchTimer.stage), plus the profiler's own `ProfilerStep#N` per batch
  kernel, gpu_memcpy, gpu_memset       work on a GPU stream (CUDA runs)
  gpu_user_annotation                  the GPU-side span of a `record_function` range (CUDA runs)
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from lipsync_lab.timing import STAGES

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
_TRACE_PATTERNS = ("*.pt.trace.json", "*.pt.trace.json.gz", "trace.json", "trace.json.gz")


def find_trace(path: str | os.PathLike) -> Path:
    """The trace file of `path`: the file itself, or in a folder (a run folder, its `trace/`, a sweep) the newest
    Chrome trace found — the fixed-name `trace.json` or TensorBoard's `*.pt.trace.json`, gzipped or not."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such trace file or folder")
    found = {p for pattern in _TRACE_PATTERNS for p in path.rglob(pattern)}
    if not found:
        raise FileNotFoundError(f"{path}: no Chrome trace inside (a run with profile=true writes trace.json and "
                                f"trace/*.pt.trace.json)")
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)))


def load_trace(path: str | os.PathLike) -> list[dict]:
    """The events of a Chrome trace (a file or a folder holding one — `find_trace`); `.gz` files are
    decompressed. Accepts both forms of the format: an object with `traceEvents`, or a bare list of events."""
    path = find_trace(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    events = data.get("traceEvents", []) if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise ValueError(f"{path}: not a Chrome trace (no list of traceEvents)")
    return events


def events_frame(events: list[dict]) -> pd.DataFrame:
    """The complete events (`ph` "X") as a table: name, cat, ts and dur (µs), pid, tid (as strings: a trace mixes
    numbers and labels)."""
    rows = [(e.get("name", ""), e.get("cat", ""), float(e.get("ts", 0.0)), float(e.get("dur", 0.0)),
             str(e.get("pid", "")), str(e.get("tid", "")))
            for e in events if e.get("ph") == "X"]
    return pd.DataFrame(rows, columns=["name", "cat", "ts", "dur", "pid", "tid"])


def self_times(ops: pd.DataFrame) -> np.ndarray:
    """Each event's self time: its duration less that of the events directly nested in it on the same thread
    (ranges on one thread nest properly; an event starting exactly where another ends is its sibling)."""
    self_us = ops["dur"].to_numpy(dtype=float).copy()
    for _, group in ops.groupby(["pid", "tid"], sort=False):
        order = group.sort_values(["ts", "dur"], ascending=[True, False])
        stack: list[tuple[float, int]] = []  # (end, position in ops) of the open ancestors
        for pos, ts, dur in zip(ops.index.get_indexer(order.index), order["ts"], order["dur"]):
            while stack and stack[-1][0] <= ts:
                stack.pop()
            if stack:
                self_us[stack[-1][1]] -= dur
            stack.append((ts + dur, pos))
    return np.maximum(self_us, 0.0)


def top_operators(events: list[dict] | pd.DataFrame, n: int = 15, device: str = "cpu") -> pd.DataFrame:
    """The `n` operators that take the most self time, summed over their calls: name, calls, self_ms, total_ms
    (including the operators they call), self_share (of all operators' self time).

    device="cpu": the ATen operators on CPU threads (what the host spends; on CUDA mostly launch costs);
    device="gpu": the GPU kernels and copies (they do not nest: self = total)."""
    df = events if isinstance(events, pd.DataFrame) else events_frame(events)
    cats = ("cpu_op",) if device == "cpu" else GPU_CATEGORIES
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', not {device!r}")
    ops = df[df["cat"].isin(cats)].reset_index(drop=True)
    columns = ["name", "calls", "self_ms", "total_ms", "self_share"]
    if ops.empty:
        return pd.DataFrame(columns=columns)
    ops = ops.assign(self_us=self_times(ops) if device == "cpu" else ops["dur"])
    table = ops.groupby("name").agg(calls=("dur", "size"), self_ms=("self_us", "sum"), total_ms=("dur", "sum"))
    table[["self_ms", "total_ms"]] /= 1000.0
    table["self_share"] = table["self_ms"] / table["self_ms"].sum()
    table = table.sort_values("self_ms", ascending=False).head(n).reset_index()
    return table[columns]


def stage_shares(events: list[dict] | pd.DataFrame, device: str = "cpu") -> pd.DataFrame:
    """Each stage's time in the trace, from the `record_function` ranges named by the stage labels: one row per
    stage present — stage (key), label, parent, calls (batches recorded), ms (summed over them) and share: a
    top-level stage's share of all top-level stages' time, a sub-stage's of its parent's.

    device="gpu" reads the ranges' GPU-side spans (`gpu_user_annotation`, CUDA runs). With the pipelined executor
    stages of different batches overlap in time, so the shares are of stage time, not of wall time."""
    df = events if isinstance(events, pd.DataFrame) else events_frame(events)
    cat = {"cpu": "user_annotation", "gpu": "gpu_user_annotation"}.get(device)
    if cat is None:
        raise ValueError(f"device must be 'cpu' or 'gpu', not {device!r}")
    ranges = df[df["cat"] == cat]
    rows = []
    for key, label, parent in STAGES:
        mine = ranges.loc[ranges["name"] == label, "dur"]
        if len(mine):
            rows.append(dict(stage=key, label=label, parent=parent, calls=int(len(mine)), ms=mine.sum() / 1000.0))
    table = pd.DataFrame(rows, columns=["stage", "label", "parent", "calls", "ms"])
    if table.empty:
        return table.assign(share=pd.Series(dtype=float))
    top = table["parent"].isna()
    # the denominator: all top-level stages for a top-level stage, the parent's own time for a sub-stage
    denominator = table["parent"].map(table.set_index("stage")["ms"])
    denominator[top] = table.loc[top, "ms"].sum()
    table["share"] = table["ms"] / denominator
    return table


def profiled_span_ms(events: list[dict] | pd.DataFrame) -> float:
    """Wall time covered by the profiler's recorded steps (`ProfilerStep#N` ranges; the span of all CPU events
    when the trace has none), in ms."""
    df = events if isinstance(events, pd.DataFrame) else events_frame(events)
    steps = df[(df["cat"] == "user_annotation") & df["name"].str.startswith("ProfilerStep#")]
    span = steps if len(steps) else df[df["cat"].isin(["cpu_op", "user_annotation"])]
    if span.empty:
        return 0.0
    return float(((span["ts"] + span["dur"]).max() - span["ts"].min()) / 1000.0)


def trace_run_folder(trace: str | os.PathLike) -> Path:
    """The run folder a trace file belongs to (TensorBoard's --logdir for it): the parent of its `trace/` folder,
    or the folder holding `trace.json`."""
    folder = Path(trace).parent
    return folder.parent if folder.name == "trace" else folder
