"""What both executors share: the stream's bookkeeping (timers, per-batch records, results).

Per batch the stream records when it arrived, when processing started and ended, and when its frames were
written — `stream.parquet`, one row per batch (results.py documents the columns) — so first-frame latency,
per-frame latency percentiles and sustained fps are measured on the stream itself, not derived from batch times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import psutil
import torch
from tqdm.auto import tqdm

from lipsync_lab.media.pace import Pacer
from lipsync_lab.media.source import SAMPLES_PER_FRAME, Batch
from lipsync_lab.pipeline import BatchResult, Work
from lipsync_lab.timing import TOP_LEVEL, BatchTimer

# the stages between reading and writing: a batch's processing starts with the first and ends with the last
PROCESSING = [key for key in TOP_LEVEL if key not in ("read", "write")]


@dataclass
class StreamResult:
    rows: list[dict] = field(default_factory=list)     # tidy timing rows of every batch (timings.parquet)
    batches: list[dict] = field(default_factory=list)  # one record per batch (stream.parquet)
    wall_s: float = 0.0
    paced: bool = False


class StreamBook:
    """Opens a timer per batch on the stream's clock, and closes each batch once its frames are written."""

    def __init__(self, source, pacer: Pacer, *, run_id: str, warmup_batches: int, device: torch.device,
                 sync: bool, stream_only: bool = False, print_batches: bool = False,
                 on_batch: Callable[[int, BatchResult], None] | None = None):
        self.source, self.pacer = source, pacer
        self.run_id, self.warmup_batches = run_id, warmup_batches
        self.device, self.sync, self.stream_only = device, sync, stream_only
        self.print_batches, self.on_batch = print_batches, on_batch
        self.result = StreamResult(paced=pacer.realtime)
        self._process = psutil.Process()
        self._bar = tqdm(total=source.n_frames, unit="frame", desc="lip-sync", disable=None, dynamic_ncols=True)

    def open(self, batch: Batch) -> Work:
        timer = BatchTimer(batch.index, len(batch.frames), warmup=batch.index < self.warmup_batches,
                           device=self.device, sync=self.sync, run_start=self.pacer.start,
                           clock=self.pacer.clock.now, stream_only=self.stream_only)
        timer.record("read", batch.read_s, self.pacer.start + batch.began_s)
        return Work(batch, timer)

    def write(self, sink, work: Work) -> None:
        """Hand the batch's frames and their audio to the sink (timed), then record the batch."""
        batch, out = work.batch, work.result
        with work.timer.stage("write"):
            lo = batch.start * SAMPLES_PER_FRAME
            sink.write(out.frames, self.source.audio[lo:lo + len(out.frames) * SAMPLES_PER_FRAME])
        written_s = self.pacer.elapsed()
        timer = work.timer
        ran = [k for k in PROCESSING if k in timer.starts]
        self.result.rows += timer.rows(self.run_id)
        self.result.batches.append(dict(
            run_id=self.run_id, batch=batch.index, first_frame=batch.start, frames=len(batch.frames),
            warmup=timer.warmup, paced=self.pacer.realtime, arrived_s=batch.arrived_s, waited_s=batch.waited_s,
            started_s=min(timer.starts[k] for k in ran), finished_s=max(timer.starts[k] + timer.seconds[k] for k in ran),
            written_s=written_s, skipped=timer.skipped, rss_mb=self._process.memory_info().rss / 2**20))
        if self.on_batch is not None:
            self.on_batch(batch.index, out)
        if self.print_batches:
            tqdm.write(timer.report())
        self._bar.update(len(out.frames))  # the bar's rate is the live frames per second

    def close(self) -> StreamResult:
        self._bar.close()
        self.result.wall_s = self.pacer.elapsed()
        return self.result
