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

from lipsync_lab.errors import LipsyncInputError
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


def top_operators(events: list[dict] | pd.DataFrame, n: int | None = 15, device: str = "cpu") -> pd.DataFrame:
    """The `n` operators (all with n=None) that take the most self time, summed over their calls: name, calls, self_ms, total_ms
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
    table = table.sort_values("self_ms", ascending=False)
    return (table.head(n) if n is not None else table).reset_index()[columns]


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


# -- offline review: timeline, operators per stage, diff (hand-written on the event table) ------------------------
# HolisticTraceAnalysis (below) analyses GPU work only: its breakdowns read kernels, copies and their launches, and it
# draws no timeline. A CPU trace (and a CUDA run's host side: its stage ranges per thread, the operators inside them)
# is read here, on the same event table as the top operators, so the review works on any profile=true run.

_STAGE_BY_LABEL = {label: (key, parent) for key, label, parent in STAGES}
_GPU_LANE_CATEGORIES = ("gpu_user_annotation", *GPU_CATEGORIES)


def _frame(events: list[dict] | pd.DataFrame) -> pd.DataFrame:
    return events if isinstance(events, pd.DataFrame) else events_frame(events)


def gpu_trace(events: list[dict] | pd.DataFrame) -> bool:
    """Whether the trace holds work on a GPU stream (a CUDA run's): what the CUDA analyses read."""
    return bool(_frame(events)["cat"].isin(GPU_CATEGORIES).any())


def stage_timeline(events: list[dict] | pd.DataFrame, device: str = "cpu") -> pd.DataFrame:
    """Each stage range as a bar on its lane: lane, stage, label, parent, start_ms, end_ms, dur_ms — start and end
    from the first recorded event (ms), one row per range.

    device="cpu": lanes are the CPU threads ("thread <tid>"); under executor=pipelined each stage runs on its own
    worker thread, so the overlap of neighbouring batches shows as bars side by side in time.
    device="gpu" (CUDA runs): lanes are the GPU streams ("stream <tid>"): the stage ranges' GPU-side spans and, as
    stages "kernel" / "gpu_memcpy" / "gpu_memset", the work itself, so copies overlapping compute are visible."""
    df = _frame(events)
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', not {device!r}")
    columns = ["lane", "stage", "label", "parent", "start_ms", "end_ms", "dur_ms"]
    cats = ("user_annotation",) if device == "cpu" else _GPU_LANE_CATEGORIES
    rows = df[df["cat"].isin(cats)]
    staged = rows["name"].isin(_STAGE_BY_LABEL) | rows["cat"].isin(GPU_CATEGORIES)
    rows = rows[staged]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    origin = df.loc[df["cat"].isin(["cpu_op", "user_annotation", *_GPU_LANE_CATEGORIES]), "ts"].min()
    is_range = rows["name"].isin(_STAGE_BY_LABEL) & ~rows["cat"].isin(GPU_CATEGORIES)
    stage = np.where(is_range, rows["name"].map(lambda n: _STAGE_BY_LABEL.get(n, (None, None))[0]), rows["cat"])
    parent = np.where(is_range, rows["name"].map(lambda n: _STAGE_BY_LABEL.get(n, (None, None))[1]), None)
    table = pd.DataFrame({
        "lane": np.where(device == "cpu", "thread ", "stream ") + rows["tid"].astype(str),
        "stage": stage, "label": np.where(is_range, rows["name"], rows["cat"]), "parent": parent,
        "start_ms": (rows["ts"] - origin) / 1000.0, "end_ms": (rows["ts"] + rows["dur"] - origin) / 1000.0,
        "dur_ms": rows["dur"] / 1000.0})
    return table.sort_values(["lane", "start_ms"]).reset_index(drop=True)[columns]


def stage_operators(events: list[dict] | pd.DataFrame, n: int | None = 5) -> pd.DataFrame:
    """The top `n` CPU operators of each stage by self time: stage, label, name, calls, self_ms, share (of the
    stage's operator self time). An operator belongs to the innermost stage range enclosing it on its thread (an
    op inside "Denoising process" counts for denoise, not diffusion); ops outside every stage range (the
    profiler's own, the executor's hand-offs) are stage "other". Stages in design order, "other" last."""
    df = _frame(events)
    columns = ["stage", "label", "name", "calls", "self_ms", "share"]
    ops = df[df["cat"] == "cpu_op"].reset_index(drop=True)
    if ops.empty:
        return pd.DataFrame(columns=columns)
    ops = ops.assign(self_us=self_times(ops), stage="other")
    ranges = df[(df["cat"] == "user_annotation") & df["name"].isin(_STAGE_BY_LABEL)]
    # outer ranges first, so an inner range's assignment overrides its parent's
    for r in ranges.sort_values("dur", ascending=False).itertuples():
        inside = (ops["pid"] == r.pid) & (ops["tid"] == r.tid) & (ops["ts"] >= r.ts) & \
                 (ops["ts"] + ops["dur"] <= r.ts + r.dur)
        ops.loc[inside, "stage"] = _STAGE_BY_LABEL[r.name][0]
    table = ops.groupby(["stage", "name"]).agg(calls=("dur", "size"), self_ms=("self_us", "sum")).reset_index()
    table["self_ms"] /= 1000.0
    table["share"] = table["self_ms"] / table.groupby("stage")["self_ms"].transform("sum")
    order = {key: i for i, (key, _, _) in enumerate(STAGES)}
    table["_order"] = table["stage"].map(order).fillna(len(order))
    table = table.sort_values(["_order", "self_ms"], ascending=[True, False])
    if n is not None:
        table = table.groupby("stage", sort=False).head(n)
    labels = {key: label for key, label, _ in STAGES}
    table["label"] = table["stage"].map(labels).fillna("outside the stage ranges")
    return table.reset_index(drop=True)[columns]


def stage_diff(baseline: list[dict] | pd.DataFrame, variant: list[dict] | pd.DataFrame,
               device: str = "cpu") -> pd.DataFrame:
    """Each stage's time in two traces, as TensorBoard's Diff view shows it: stage, label, parent, calls_before,
    calls_after, ms_before, ms_after, delta_ms (after − before), ratio (after ÷ before). Totals over each trace's
    recorded batches (`stage_shares`): compare traces of the same number of batches (profiler.active)."""
    before, after = stage_shares(_frame(baseline), device), stage_shares(_frame(variant), device)
    keys = ["stage", "label", "parent"]
    table = before[keys + ["calls", "ms"]].merge(after[keys + ["calls", "ms"]], on=keys, how="outer",
                                                 suffixes=("_before", "_after"))
    order = {key: i for i, (key, _, _) in enumerate(STAGES)}
    table = table.sort_values("stage", key=lambda s: s.map(order)).reset_index(drop=True)
    return _delta(table, "ms", ["stage", "label", "parent"])


def operator_diff(baseline: list[dict] | pd.DataFrame, variant: list[dict] | pd.DataFrame, n: int | None = 20,
                  device: str = "cpu") -> pd.DataFrame:
    """Each operator's self time in two traces: name, calls_before, calls_after, self_ms_before, self_ms_after,
    delta_ms, ratio — the `n` largest changes (either sign) first; an operator in one trace only counts 0 in the
    other."""
    cols = ["name", "calls", "self_ms"]
    before = top_operators(_frame(baseline), None, device)[cols]
    after = top_operators(_frame(variant), None, device)[cols]
    table = before.merge(after, on="name", how="outer", suffixes=("_before", "_after"))
    table = _delta(table, "self_ms", ["name"])
    table = table.reindex(table["delta_ms"].abs().sort_values(ascending=False, kind="stable").index)
    return (table.head(n) if n is not None else table).reset_index(drop=True)


def _delta(table: pd.DataFrame, value: str, keys: list[str]) -> pd.DataFrame:
    for col in ("calls_before", "calls_after", f"{value}_before", f"{value}_after"):
        table[col] = table[col].fillna(0)
    table[["calls_before", "calls_after"]] = table[["calls_before", "calls_after"]].astype(int)
    table["delta_ms"] = table[f"{value}_after"] - table[f"{value}_before"]
    before = table[f"{value}_before"]
    table["ratio"] = (table[f"{value}_after"] / before.where(before > 0)).astype(float)
    return table[keys + ["calls_before", "calls_after", f"{value}_before", f"{value}_after", "delta_ms", "ratio"]]


# -- CUDA traces: HolisticTraceAnalysis ---------------------------------------------------------------------------

def cuda_analyses(trace: str | os.PathLike, top: int = 10) -> dict[str, pd.DataFrame]:
    """HolisticTraceAnalysis (HTA) on a CUDA run's trace (a file or a folder holding one — `find_trace`):

      temporal      HTA's temporal breakdown: idle / compute / non-compute (copies) time of the GPU, µs and %, over
                    the span from the first kernel's start to the last one's end
      kernel_types  time by kernel type, "COMPUTATION overlapping MEMORY" being the compute/transfer overlap (µs)
      kernels       the top kernels per type: sum, max, min, mean (µs), kernel_type
      idle          idle time per stream by cause (host_wait: the CPU did not enqueue enough; kernel_wait: gaps
                    between back-to-back kernels; other)
      launch        per kernel launch (correlation id): cpu_duration of the runtime call, gpu_duration, launch_delay
      overlap       the compute/transfer overlap in one row: transfer_us, overlapped_us, overlapped_share

    A trace without GPU work raises LipsyncInputError (a CPU run has the timeline, operators and diff only)."""
    path = find_trace(trace)
    if not gpu_trace(load_trace(path)):
        raise LipsyncInputError(path, "no GPU kernels in this trace: the CUDA analyses need a run with device=cuda "
                                      "(a CPU trace has its timeline, operators and diff)")
    try:  # the `profiling` (and `dev`) extra; imported only for a CUDA trace
        from hta.trace_analysis import TraceAnalysis
    except ImportError as e:
        raise ImportError("the CUDA analyses need HolisticTraceAnalysis: pip install holistictraceanalysis "
                          "(or the project's profiling extra: pip install -e \".[profiling]\")") from e

    # HTA reads a folder of per-rank files and takes each file's rank from its `distributedInfo`; a single-process
    # run's trace has none, so the rank is given (0) with the file, and nothing is copied or rewritten.
    # include_last_profiler_step: HTA drops the last ProfilerStep by default (a training loop's last step is often
    # cut short); a profiled run records whole batches only, and typically just two.
    analysis = TraceAnalysis(trace_files={0: str(path.resolve())}, trace_dir=str(path.parent.resolve()),
                             include_last_profiler_step=True)
    temporal = analysis.get_temporal_breakdown(visualize=False)
    kernel_types, kernels = analysis.get_gpu_kernel_breakdown(visualize=False, num_kernels=top, duration_ratio=1.0)
    idle, _ = analysis.get_idle_time_breakdown(visualize=False)
    launch = analysis.get_cuda_kernel_launch_stats(visualize=False)[0]
    return dict(temporal=temporal, kernel_types=kernel_types, kernels=kernels, idle=idle.reset_index(drop=True),
                launch=launch, overlap=transfer_overlap(kernel_types))


def transfer_overlap(kernel_types: pd.DataFrame) -> pd.DataFrame:
    """How much of the GPU's copy time ran while a compute kernel ran, from HTA's kernel-type breakdown: HTA
    reports the overlapped time as a kernel type ("COMPUTATION overlapping MEMORY") but not as a share of the
    copies, and its own overlap analysis (get_comm_comp_overlap) is of NCCL communication with compute — a
    single-GPU pipeline has no collectives, so that one reads 0 here; this is the one it lacks."""
    by_type = kernel_types.set_index("kernel_type")["sum"].astype(float)
    overlapped = float(by_type.get("COMPUTATION overlapping MEMORY", 0.0))
    transfer = overlapped + float(by_type.get("MEMORY", 0.0))
    share = overlapped / transfer if transfer > 0 else float("nan")
    return pd.DataFrame([dict(transfer_us=transfer, overlapped_us=overlapped, overlapped_share=share)])
