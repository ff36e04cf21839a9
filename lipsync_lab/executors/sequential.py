"""The sequential executor: each batch is read, processed and written before the next is read."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from lipsync_lab.media.source import SAMPLES_PER_FRAME, iter_batches
from lipsync_lab.pipeline import BatchResult, LipsyncPipeline
from lipsync_lab.timing import BatchTimer


@dataclass
class StreamResult:
    rows: list[dict] = field(default_factory=list)  # tidy timing rows of every batch
    first_batch_s: float | None = None               # stream start → first batch written
    wall_s: float = 0.0


class SequentialExecutor:
    def stream(self, source, pipeline: LipsyncPipeline, sink, *, batch_frames: int, lookahead: int,
               warmup_batches: int, device: torch.device, sync: bool, run_id: str, print_batches: bool,
               on_batch: Callable[[int, BatchResult], None] | None = None) -> StreamResult:
        """Source → batches → pipeline → sink, one BatchTimer per batch; the sink is closed on success and
        aborted on any failure (no output that looks complete)."""
        batches = iter_batches(source, batch_frames, lookahead)
        result = StreamResult()
        start = time.perf_counter()
        bar = tqdm(total=source.n_frames, unit="frame", desc="lip-sync", disable=None, dynamic_ncols=True)
        try:
            for index in range((source.n_frames + batch_frames - 1) // batch_frames):
                timer = BatchTimer(index, 0, warmup=index < warmup_batches, device=device, sync=sync,
                                   run_start=start)
                with timer.stage("read"):
                    batch = next(batches)
                timer.frames = len(batch.frames)
                out = pipeline(batch, timer)
                with timer.stage("write"):
                    lo = batch.start * SAMPLES_PER_FRAME
                    sink.write(out.frames, source.audio[lo:lo + len(out.frames) * SAMPLES_PER_FRAME])
                if result.first_batch_s is None:
                    result.first_batch_s = time.perf_counter() - start
                result.rows += timer.rows(run_id)
                if on_batch is not None:
                    on_batch(index, out)
                if print_batches:
                    tqdm.write(timer.report())
                bar.update(len(out.frames))  # the bar's rate is the live frames per second
            sink.close()
        except BaseException:
            sink.abort()
            raise
        finally:
            bar.close()
        result.wall_s = time.perf_counter() - start
        return result
