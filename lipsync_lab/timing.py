"""Per-batch stage timing, honest by construction (design §5).

Every stage boundary synchronises the device before reading the clock (on CUDA the GPU runs ahead of Python,
so an unsynchronised clock charges a stage's work to whichever later stage first waits on it — the artefact
behind the seed's "decode grew after compiling"). `sync=False` reproduces that artefact on purpose.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import psutil
import torch
from torch.profiler import record_function

# (key, label printed, parent key). Labels are the seed's, verbatim (design §2). Order = print order.
STAGES: list[tuple[str, str, str | None]] = [
    ("read", "Read frames", None),
    ("face", "Facial preprocessing", None),
    ("audio", "Audio feature preparation", None),
    ("diffusion", "Diffusion inference", None),
    ("latents", "Prepare latent variables", "diffusion"),
    ("timesteps", "Set timesteps", "diffusion"),
    ("audio_embeds", "Prepare audio embeddings", "diffusion"),
    ("masks", "Prepare face masks", "diffusion"),
    ("mask_latents", "Prepare mask latent variables", "diffusion"),
    ("image_latents", "Prepare image latent variables", "diffusion"),
    ("denoise", "Denoising process", "diffusion"),
    ("decode", "Decode and post-process", "diffusion"),
    ("restore", "Face postprocessing", None),
    ("write", "Write frames", None),
]
# One row per denoising step; its label is the printed average's, since those rows are what it averages.
STEP_STAGE = ("denoise_step", "Average denoising per step", "denoise")
STEP_RANGE = "Denoising step"  # the profiler range of one step (the label above names their average)
LABELS = {key: label for key, label, _ in STAGES + [STEP_STAGE]}
PARENTS = {key: parent for key, _, parent in STAGES + [STEP_STAGE]}
TOP_LEVEL = [key for key, _, parent in STAGES if parent is None]
DIFFUSION_SUBSTAGES = [key for key, _, parent in STAGES if parent == "diffusion"]
# the pipeline's stages (pipeline.py: one run_<key> method each); reading and writing are the executor's own
IO_STAGES = ("read", "write")
PROCESSING = [key for key in TOP_LEVEL if key not in IO_STAGES]
# the comparison table's stage columns, in this table's order: every top-level stage and the model's heaviest parts
COMPARED = [key for key, _, parent in STAGES if parent is None or key in ("denoise", "decode")]


def device_sync(device: torch.device | str | None, stream_only: bool = False) -> None:
    """Wait for queued device work so a clock read afterwards measures it.

    `stream_only` waits for the calling thread's current CUDA stream alone: under the pipelined executor each
    stage's thread issues its work on a stream of its own, and a device-wide synchronise would make every stage
    wait for its neighbours' work — serialising the very overlap being measured, and charging it to the wrong stage.
    """
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        if stream_only:
            torch.cuda.current_stream(device).synchronize()
        else:
            torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()


MB = 2 ** 20
_PROCESS = psutil.Process()


def rss_mb() -> float:
    """The process's resident memory now, in MiB."""
    return _PROCESS.memory_info().rss / MB


class MemoryProbe:
    """Memory per stage: the device's peak allocated and reserved bytes while the stage ran, and the process's
    resident memory (RSS) when it ended.

    Peaks: CUDA's allocator keeps one device-wide high-water mark; it is reset when a stage starts, so each stage's
    own peak is known. Stages nest (the diffusion stage holds its eight sub-stages): a reset inside an open stage
    would lose that stage's peak so far, so the peak read just before the reset is carried into every open stage,
    and a finished stage's peak into the stages around it. With `per_stage=False` (the pipelined executor: stages
    of neighbouring batches run at once on other threads, and one thread's reset would erase another's peak) no
    stage resets anything and the per-stage device columns stay empty (NaN); the stream's peak is still measured
    as a whole (executors/stream.py). On the CPU there is no device memory: RSS only (the device columns are NaN).
    RSS is read at the stage's end, not its peak (the OS keeps no resettable high-water mark per stage; the run's
    own high-water mark is in the summary).
    """

    def __init__(self, device: torch.device | None, per_stage: bool = True):
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.device = torch.device(device) if self.cuda else None
        self.per_stage = per_stage and self.cuda
        self._open: list[list[float]] = []  # [peak allocated, peak reserved] of each open stage, outermost first

    def _peaks(self) -> tuple[float, float]:
        return (torch.cuda.max_memory_allocated(self.device) / MB, torch.cuda.max_memory_reserved(self.device) / MB)

    def _carry(self, peaks: tuple[float, float]) -> None:
        for entry in self._open:
            entry[0], entry[1] = max(entry[0], peaks[0]), max(entry[1], peaks[1])

    def start(self) -> None:
        if not self.per_stage:
            return
        self._carry(self._peaks())
        torch.cuda.reset_peak_memory_stats(self.device)
        self._open.append([0.0, 0.0])

    def end(self) -> dict[str, float]:
        out = dict(peak_allocated_mb=math.nan, peak_reserved_mb=math.nan, rss_mb=rss_mb())
        if self.per_stage:
            peaks = self._peaks()
            mine = self._open.pop()
            out["peak_allocated_mb"], out["peak_reserved_mb"] = max(mine[0], peaks[0]), max(mine[1], peaks[1])
            self._carry(peaks)
        return out


def rss_peak_mb() -> float:
    """The process's resident-memory high-water mark since it started (getrusage; kB on Linux, bytes on macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


class ModelMemory:
    """What the models hold before the stream: device memory allocated once they are built (the weights and
    buffers — diffusers' "model memory") and the device's peak during the warm-up call; on the CPU, resident
    memory before and after building (RSS only: no device memory to tell the models' share apart)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.rss_before_mb = rss_mb()
        self.rss_built_mb = self.model_mb = self.warmup_peak_mb = None
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / MB  # what was there before (another run's)

    def built(self) -> None:
        self.rss_built_mb = rss_mb()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.model_mb = torch.cuda.memory_allocated(self.device) / MB - self._base
            torch.cuda.reset_peak_memory_stats(self.device)

    def warmed_up(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.warmup_peak_mb = torch.cuda.max_memory_allocated(self.device) / MB - self._base


MEMORY_COLUMNS = ("peak_allocated_mb", "peak_reserved_mb", "rss_mb")
NO_MEMORY = {k: math.nan for k in MEMORY_COLUMNS}


@dataclass
class BatchTimer:
    """Collects one batch's stage times (seconds) and per-step denoising times."""

    batch: int
    frames: int
    warmup: bool
    device: torch.device | None = None
    sync: bool = True
    run_start: float = field(default_factory=time.perf_counter)
    clock: Callable[[], float] = time.perf_counter  # injectable (tests drive a fake clock)
    stream_only: bool = False  # synchronise the calling thread's CUDA stream only (the pipelined executor)
    memory: MemoryProbe | None = None  # memory per stage (None: not measured, e.g. the warm-up call)
    seconds: dict[str, float] = field(default_factory=dict)
    starts: dict[str, float] = field(default_factory=dict)
    steps: list[tuple[int, float]] = field(default_factory=list)  # (timestep, seconds)
    memories: dict[str, dict[str, float]] = field(default_factory=dict)  # stage → MEMORY_COLUMNS
    face_frames: int = 0
    landmarks_cached: int = 0  # frames whose landmarks were read from the landmark cache, not computed
    skipped: str = ""          # why diffusion did not run: "" (it ran) | "no_face" | "silent" (voice activity)
    unet_frames: int = 0       # UNet frame-evaluations the batch cost (clips × frames per call, summed over calls)
    unet_frames_shallow: int = 0  # of a cheaper UNet callable (a shallow DeepCache step), apart

    def _now(self) -> float:
        if self.sync:
            device_sync(self.device, self.stream_only)
        return self.clock()

    @contextmanager
    def stage(self, key: str):
        if key not in LABELS:
            raise KeyError(f"unknown stage {key!r}")
        start = self._now()
        if self.memory is not None:
            self.memory.start()
        try:
            # a profiler range per stage, named by its label, so a trace reads like the printed table (a no-op
            # costing ~1 µs when no profiler is active)
            with record_function(LABELS[key]):
                yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + self._now() - start
            self.starts.setdefault(key, start - self.run_start)
            if self.memory is not None:
                self._add_memory(key, self.memory.end())

    def _add_memory(self, key: str, memory: dict[str, float]) -> None:
        """A stage entered twice in a batch keeps its highest figures."""
        before = self.memories.get(key)
        self.memories[key] = memory if before is None else {
            k: max(before[k], v) if not (math.isnan(before[k]) or math.isnan(v)) else v for k, v in memory.items()}

    @contextmanager
    def step(self, timestep: int):
        start = self._now()
        try:
            with record_function(STEP_RANGE):
                yield
        finally:
            self.steps.append((int(timestep), self._now() - start))

    def record(self, key: str, seconds: float, start: float) -> None:
        """A stage timed elsewhere (reading: decoding is timed apart from waiting for a paced source)."""
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        self.starts.setdefault(key, start - self.run_start)
        if self.memory is not None:  # no device work to attribute; the process's memory after it
            self._add_memory(key, dict(NO_MEMORY, rss_mb=rss_mb()))

    def skip(self, key: str) -> None:
        """Record a stage that did not run in this batch (e.g. diffusion for a batch with no face) as 0 s."""
        self.seconds.setdefault(key, 0.0)

    @property
    def total(self) -> float:
        return sum(self.seconds.get(k, 0.0) for k in TOP_LEVEL)

    def rows(self, run_id: str) -> list[dict]:
        """Tidy rows: one per stage, plus one per denoising step (stage 'denoise_step', step = index)."""
        base = dict(run_id=run_id, batch=self.batch, frames=self.frames, face_frames=self.face_frames,
                    landmarks_cached=self.landmarks_cached, skipped=self.skipped, warmup=self.warmup,
                    unet_frames=self.unet_frames, unet_frames_shallow=self.unet_frames_shallow)
        out = []
        for key, label, parent in STAGES:
            if key in self.seconds:
                out.append(dict(base, stage=key, label=label, parent=parent, step=-1, timestep=-1,
                                seconds=self.seconds[key], start_s=self.starts.get(key, float("nan")),
                                **self.memories.get(key, NO_MEMORY)))
        key, label, parent = STEP_STAGE
        for i, (t, s) in enumerate(self.steps):
            out.append(dict(base, stage=key, label=label, parent=parent, step=i, timestep=t, seconds=s,
                            start_s=float("nan"), **NO_MEMORY))
        return out

    def report(self) -> str:
        """The seed's per-batch block, verbatim labels (design §2)."""
        lines = [f"Batch {self.batch} processing completed, total time: {self.total:.4f} seconds", "Step times:"]
        for key, label, parent in STAGES:
            if key not in self.seconds:
                continue
            indent = "    " if parent else "  "
            lines.append(f"{indent}{label}: {self.seconds[key]:.4f} seconds")
            if key == "denoise":
                avg = sum(s for _, s in self.steps) / len(self.steps) if self.steps else 0.0
                lines.append(f"{indent}{STEP_STAGE[1]}: {avg:.4f} seconds")
        return "\n".join(lines)
