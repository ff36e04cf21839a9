"""What every executor shares: the stream's settings, and its bookkeeping (timers, per-batch records, results).

An executor is `stream(source, pipeline, sink, settings, recorder=None, on_batch=None) -> StreamResult` plus a
class attribute `overlaps_stages` (do stages of neighbouring batches run at once? Then summed stage times are work,
not wall time, and per-stage device-memory peaks cannot be attributed — timing.MemoryProbe).

Per batch the stream records when it arrived, when processing started and ended, and when its frames were
written — `stream.parquet`, one row per batch (results.py documents the columns) — so first-frame latency,
per-frame latency percentiles and sustained fps are measured on the stream itself, not derived from batch times.
Records go to a recorder (recording.py): on disk in bounded chunks for a run, in memory for tests.

Stopping: the stream checks `settings.stop` (stopping.py: set by SIGINT/SIGTERM/SIGUSR2) after each batch is
written, so an interrupted stream ends on a batch boundary with every frame written so far in the sink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from lipsync_lab.media.pace import Pacer
from lipsync_lab.media.source import FPS, SAMPLES_PER_FRAME, Batch
from lipsync_lab.pipeline import BatchResult, Work
from lipsync_lab.recording import MemoryRecorder
from lipsync_lab.stopping import StopRequest
from lipsync_lab.timing import MB, PROCESSING, BatchTimer, MemoryProbe, rss_mb



@dataclass(frozen=True)
class StreamSettings:
    """How a stream runs, whatever the executor."""

    batch_frames: int                 # frames per batch
    lookahead: int = 0                # frames of audio a batch waits for past its own (audio/features.py)
    warmup_batches: int = 1           # leading batches recorded but flagged warm-up
    device: torch.device = torch.device("cpu")
    sync: bool = True                 # synchronise the device at stage boundaries (timing.py)
    run_id: str = ""                  # the variant name, on every record
    print_batches: bool = False       # print the seed's per-batch block
    pace: str = "none"                # none | realtime (media/pace.py)
    stop: StopRequest | None = None   # checked after each written batch (stopping.py)
    clock: object | None = None       # None: the wall clock; tests pass media.pace.FakeClock


@dataclass
class StreamResult:
    recorder: object                  # where the records went (recording.py)
    wall_s: float = 0.0
    paced: bool = False
    batches: int = 0                  # batches written
    frames: int = 0                   # frames written
    interrupted: str | None = None    # the signal's name when a stop request ended the stream early
    peak_allocated_mb: float = math.nan  # the device's peak over the stream (CUDA; NaN on the CPU)
    peak_reserved_mb: float = math.nan


class StreamBook:
    """Opens a timer per batch on the stream's clock, and closes each batch once its frames are written."""

    def __init__(self, source, settings: StreamSettings, *, overlapping: bool, recorder=None,
                 on_batch: Callable[[int, BatchResult], None] | None = None):
        self.source, self.settings = source, settings
        self.pacer = Pacer(settings.pace, FPS, settings.clock)
        self.overlapping, self.on_batch = overlapping, on_batch
        self.result = StreamResult(recorder if recorder is not None else MemoryRecorder(),
                                   paced=self.pacer.realtime)
        self._device = torch.device(settings.device)
        if self._device.type == "cuda":  # the stream's own peak, over every stage and thread
            torch.cuda.reset_peak_memory_stats(self._device)
        self._bar = tqdm(total=source.n_frames, unit="frame", desc="lip-sync", disable=None, dynamic_ncols=True)

    @property
    def stop_requested(self) -> bool:
        return self.settings.stop is not None and self.settings.stop.is_set()

    def open(self, batch: Batch) -> Work:
        s = self.settings
        timer = BatchTimer(batch.index, len(batch.frames), warmup=batch.index < s.warmup_batches,
                           device=s.device, sync=s.sync, run_start=self.pacer.start, clock=self.pacer.clock.now,
                           stream_only=self.overlapping, memory=MemoryProbe(s.device, per_stage=not self.overlapping))
        timer.record("read", batch.read_s, self.pacer.start + batch.began_s)
        return Work(batch, timer)

    def write(self, sink, work: Work) -> None:
        """Hand the batch's frames and their audio to the sink (timed), then record the batch."""
        batch, out, timer = work.batch, work.result, work.timer
        with timer.stage("write"):
            lo = batch.start * SAMPLES_PER_FRAME
            sink.write(out.frames, self.source.audio[lo:lo + len(out.frames) * SAMPLES_PER_FRAME])
        written_s = self.pacer.elapsed()
        ran = [k for k in PROCESSING if k in timer.starts]  # a batch's processing: its first stage to its last
        rows = timer.rows(self.settings.run_id)
        self.result.recorder.add(rows, dict(
            run_id=self.settings.run_id, batch=batch.index, first_frame=batch.start, frames=len(batch.frames),
            warmup=timer.warmup, paced=self.pacer.realtime, arrived_s=batch.arrived_s, waited_s=batch.waited_s,
            started_s=min(timer.starts[k] for k in ran), finished_s=max(timer.starts[k] + timer.seconds[k] for k in ran),
            written_s=written_s, skipped=timer.skipped, rss_mb=rss_mb()))
        for row in rows:  # per-stage peaks (sequential executor): the stream's peak is their maximum
            self.result.peak_allocated_mb = _max(self.result.peak_allocated_mb, row["peak_allocated_mb"])
            self.result.peak_reserved_mb = _max(self.result.peak_reserved_mb, row["peak_reserved_mb"])
        self.result.batches += 1
        self.result.frames += len(out.frames)
        if self.on_batch is not None:
            self.on_batch(batch.index, out)
        if self.settings.print_batches:
            tqdm.write(timer.report())
        self._bar.update(len(out.frames))  # the bar's rate is the live frames per second

    def finish_sink(self, sink) -> None:
        """Close the sink — complete output of every batch written — or abort it when no batch was (a stop before
        the first one): an mp4 without frames is no output."""
        if self.result.batches:
            sink.close()
        else:
            sink.abort()

    def close(self, completed: bool = True) -> StreamResult:
        """End the stream's records. `completed=False` (it failed): the records stay in their parts on disk, for a
        post-mortem, rather than becoming result files that look like a finished run's."""
        self._bar.close()
        self.result.wall_s = self.pacer.elapsed()
        if self.settings.stop is not None and self.settings.stop.is_set():
            self.result.interrupted = self.settings.stop.name
        if self._device.type == "cuda":  # without per-stage resets (overlapping stages) this is the whole stream's
            self.result.peak_allocated_mb = _max(self.result.peak_allocated_mb,
                                                 torch.cuda.max_memory_allocated(self._device) / MB)
            self.result.peak_reserved_mb = _max(self.result.peak_reserved_mb,
                                                torch.cuda.max_memory_reserved(self._device) / MB)
        if completed:
            self.result.recorder.close()
        elif hasattr(self.result.recorder, "flush"):
            self.result.recorder.flush()
        return self.result


def _max(a: float, b: float) -> float:
    return b if math.isnan(a) else a if math.isnan(b) else max(a, b)
