"""`profile=true`: a few steady-state batches of a run recorded by torch.profiler, for TensorBoard and Perfetto.

    with StreamProfiler.from_config(cfg, run_dir, device) as profiler:
        executor.stream(..., on_batch=lambda i, out: profiler.step())
    summary["trace"] = profiler.paths()

One profiler step = one finished batch. The schedule is bounded so a trace stays small (a full-size model's batch
records tens of thousands of ops): the run's warm-up batches are always skipped (they pay one-time costs, as the
summary leaves them out), then `profiler.wait` batches, `profiler.warmup` batches recorded and thrown away (the
profiler's own start-up cost), and `profiler.active` batches recorded — once, never repeated.

Where the files land, inside the run folder:
  trace/<worker>.<ns>.pt.trace.json   the TensorBoard layout (torch.profiler.tensorboard_trace_handler): open with
                                      `make board` (TensorBoard + torch-tb-profiler on results/), where each
                                      profiled run's `trace/` folder is one run of the PyTorch Profiler tab
  trace.json                          the same Chrome-trace file under a fixed name (a hard link, no extra space),
                                      for ui.perfetto.dev or chrome://tracing
  profile_ops.txt                     the top operators by self time (torch's key_averages table)
  memory_timeline.html                with profiler.memory=true: memory by category over the profiled batches
  memory_snapshot.pickle              with profiler.memory=true on CUDA: the allocator's history, for
                                      pytorch.org/memory_viz
Each stage of a batch is a range named by its printed label ("Facial preprocessing", "Diffusion inference",
"Denoising process", one "Denoising step" per step …: BatchTimer.stage), so a trace reads like the summary table;
lipsync_lab/traces.py reads a trace back offline (top operators, stage shares, the stage timeline per thread, operators
per stage, a diff of two traces, on CUDA HolisticTraceAnalysis's kernel and idle-time breakdowns): TensorBoard's
profiler tab needs the internet (it loads Google Charts), and so does Perfetto's UI.

Threads: a profiler normally records the ops of the thread that started it (and of threads torch hands its state
to, such as autograd's). The pipelined executor runs stages in worker threads that exist before the schedule turns
the recording on, so those ops would be missing; torch ≥ 2.7's `_ExperimentalConfig(profile_all_threads=True)`
registers the recording for every thread instead (`profiler.all_threads`, on by default; tested with a worker
thread in tests/test_profiling.py). Where torch lacks it, the log says only the calling thread is recorded.

Profiling costs time: the recorded batches' stage times include the profiler's overhead (small for the default
settings, large with `with_stack` or `memory`), so a profiled run is for reading traces, not for timing tables
(its variant name says `profile=true`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Mapping

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

log = logging.getLogger(__name__)

TRACE_DIR = "trace"
CHROME_TRACE = "trace.json"
OPS_TABLE = "profile_ops.txt"
MEMORY_TIMELINE = "memory_timeline.html"
MEMORY_SNAPSHOT = "memory_snapshot.pickle"

# the profiler settings and their defaults (conf/config.yaml's `profiler` node says what each does)
DEFAULTS = dict(wait=0, warmup=1, active=2, record_shapes=False, with_stack=False, with_flops=False, memory=False,
                all_threads=True)


def _experimental_config(all_threads: bool):
    """The `_ExperimentalConfig` recording every thread's ops, or None where not asked for or not supported."""
    if not all_threads:
        return None
    try:
        from torch._C._profiler import _ExperimentalConfig

        return _ExperimentalConfig(profile_all_threads=True)
    except (ImportError, TypeError):  # torch < 2.7: no such option
        log.warning("torch %s cannot profile every thread: only ops of the thread that runs the stream (and "
                    "threads torch propagates its state to) are recorded", torch.__version__)
        return None


class StreamProfiler:
    """Context manager around a stream; `step()` once per finished batch. Disabled, it does nothing (same API)."""

    def __init__(self, settings: Mapping | None, run_dir: str | os.PathLike, device: torch.device | str | None,
                 run_name: str = "", *, enabled: bool = True, skip_first: int = 0):
        self.settings = dict(DEFAULTS, **dict(settings or {}))
        unknown = set(self.settings) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown profiler setting(s) {sorted(unknown)}: {sorted(DEFAULTS)}")
        self.enabled = bool(enabled)
        self.run_dir = Path(run_dir)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        # the worker name prefixes the trace file; TensorBoard shows it under "Workers" (the run is the folder)
        self.worker = re.sub(r"[^A-Za-z0-9._=+-]", "_", run_name) or "lipsync"
        self.skip_first = int(skip_first)
        self._prof: profile | None = None
        self._lock = threading.Lock()  # step() may come from whichever thread finishes a batch
        self._steps = 0
        self._recorded: list[int] = []  # batch indices (= profiler steps) inside the saved trace
        self._files: dict[str, str] = {}

    @classmethod
    def from_config(cls, cfg, run_dir: str | os.PathLike, device) -> "StreamProfiler":
        """The run's profiler: on when `profile=true`, settings from `profiler`, the warm-up batches skipped."""
        settings = cfg.get("profiler") or {}
        if hasattr(settings, "items"):
            settings = {k: v for k, v in settings.items()}
        return cls(settings, run_dir, device, cfg.get("variant") or "", enabled=bool(cfg.get("profile")),
                   skip_first=int(cfg.get("warmup_batches") or 0))

    # -- the schedule ---------------------------------------------------------------------------------------------
    def _schedule(self):
        s = self.settings
        return schedule(skip_first=self.skip_first, wait=int(s["wait"]), warmup=int(s["warmup"]),
                        active=int(s["active"]), repeat=1)

    @property
    def first_recorded_batch(self) -> int:
        return self.skip_first + int(self.settings["wait"]) + int(self.settings["warmup"])

    # -- context manager ------------------------------------------------------------------------------------------
    def __enter__(self) -> "StreamProfiler":
        if not self.enabled:
            return self
        s = self.settings
        if int(s["active"]) < 1:
            raise ValueError("profiler.active must be at least 1 (batches recorded)")
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda" and ProfilerActivity.CUDA in torch.profiler.supported_activities():
            activities.append(ProfilerActivity.CUDA)
        memory = bool(s["memory"])
        kwargs = {}
        experimental = _experimental_config(bool(s["all_threads"]))
        if experimental is not None:
            kwargs["experimental_config"] = experimental
        self._prof = profile(
            activities=activities, schedule=self._schedule(), on_trace_ready=self._trace_ready,
            # the memory timeline needs shapes and stacks to categorise allocations
            record_shapes=bool(s["record_shapes"]) or memory, with_stack=bool(s["with_stack"]) or memory,
            profile_memory=memory, with_flops=bool(s["with_flops"]), **kwargs)
        if memory and self.device.type == "cuda":
            # the allocator's own history (bounded), the memory tool torch recommends over the timeline
            torch.cuda.memory._record_memory_history(max_entries=200_000)
        log.info("Profiling batches %d–%d (after %d warm-up, %d waiting, %d profiler warm-up) into %s",
                 self.first_recorded_batch, self.first_recorded_batch + int(s["active"]) - 1, self.skip_first,
                 int(s["wait"]), int(s["warmup"]), self.run_dir / TRACE_DIR)
        self._prof.__enter__()
        return self

    def step(self) -> None:
        """One batch finished (call it once per batch, in batch order)."""
        if self._prof is None:
            return
        with self._lock:
            if self._prof.current_action in (torch.profiler.ProfilerAction.RECORD,
                                             torch.profiler.ProfilerAction.RECORD_AND_SAVE):
                self._recorded.append(self._steps)
            self._steps += 1
            self._prof.step()

    def __exit__(self, *exc) -> None:
        if self._prof is None:
            return
        prof, self._prof = self._prof, None
        with self._lock:  # a stream that ended inside the active window saves what was recorded so far
            prof.__exit__(*exc)
        if self.settings["memory"] and self.device.type == "cuda":
            torch.cuda.memory._record_memory_history(enabled=None)
        if exc[0] is None and not self._files:
            log.warning("profile=true but no batch was recorded: the stream had %d batch(es), the first recorded "
                        "one would be batch %d (warm-up %d + profiler.wait + profiler.warmup)", self._steps,
                        self.first_recorded_batch, self.skip_first)

    # -- output ---------------------------------------------------------------------------------------------------
    def _trace_ready(self, prof: profile) -> None:
        trace_dir = self.run_dir / TRACE_DIR
        before = set(trace_dir.glob("*.pt.trace.json")) if trace_dir.is_dir() else set()
        tensorboard_trace_handler(str(trace_dir), worker_name=self.worker)(prof)
        written = sorted(set(trace_dir.glob("*.pt.trace.json")) - before)
        if not written:
            return
        tb_file = written[-1]
        chrome = self.run_dir / CHROME_TRACE
        chrome.unlink(missing_ok=True)
        try:
            os.link(tb_file, chrome)  # one file, two names: no extra space for a large trace
        except OSError:
            import shutil

            shutil.copyfile(tb_file, chrome)
        self._files.update(tensorboard=str(trace_dir), tensorboard_file=str(tb_file), chrome=str(chrome))
        device_time = self.device.type == "cuda" and ProfilerActivity.CUDA in prof.activities
        sort = "self_device_time_total" if device_time else "self_cpu_time_total"
        (self.run_dir / OPS_TABLE).write_text(prof.key_averages().table(sort_by=sort, row_limit=30) + "\n")
        self._files["ops"] = str(self.run_dir / OPS_TABLE)
        if self.settings["memory"]:
            self._export_memory(prof)

    def _export_memory(self, prof: profile) -> None:
        device = f"cuda:{self.device.index or 0}" if self.device.type == "cuda" else "cpu"
        try:
            prof.export_memory_timeline(str(self.run_dir / MEMORY_TIMELINE), device=device)
            self._files["memory_timeline"] = str(self.run_dir / MEMORY_TIMELINE)
        except Exception as e:  # a report must not fail the run it reports on
            log.warning("memory timeline not written: %s", e)
        if self.device.type == "cuda":
            try:
                torch.cuda.memory._dump_snapshot(str(self.run_dir / MEMORY_SNAPSHOT))
                self._files["memory_snapshot"] = str(self.run_dir / MEMORY_SNAPSHOT)
            except Exception as e:
                log.warning("memory snapshot not written: %s", e)

    def paths(self) -> dict | None:
        """For summary["trace"]: the files written and the batches they cover; None when not profiling."""
        if not self.enabled:
            return None
        return dict(self._files, batches=list(self._recorded), all_threads=bool(self.settings["all_threads"]))
