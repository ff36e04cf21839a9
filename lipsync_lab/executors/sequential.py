"""The sequential executor: each batch is read, processed and written before the next is read."""

from __future__ import annotations

import torch

from lipsync_lab.executors.stream import StreamBook, StreamResult
from lipsync_lab.media.pace import Pacer
from lipsync_lab.media.source import FPS, iter_batches
from lipsync_lab.pipeline import LipsyncPipeline


class SequentialExecutor:
    def __init__(self, clock=None):
        self.clock = clock  # None: the wall clock (media/pace.py); tests pass a fake one

    def stream(self, source, pipeline: LipsyncPipeline, sink, *, batch_frames: int, lookahead: int,
               warmup_batches: int, device: torch.device, sync: bool, run_id: str, print_batches: bool,
               on_batch=None, pace: str = "none") -> StreamResult:
        """Source → batches → pipeline → sink, one BatchTimer per batch; the sink is closed on success and
        aborted on any failure (no output that looks complete)."""
        pacer = Pacer(pace, FPS, self.clock)
        book = StreamBook(source, pacer, run_id=run_id, warmup_batches=warmup_batches, device=device, sync=sync,
                          print_batches=print_batches, on_batch=on_batch)
        try:
            for batch in iter_batches(source, batch_frames, lookahead, pacer):
                work = book.open(batch)
                for _, stage in pipeline.stages():
                    stage(work)
                book.write(sink, work)
            sink.close()
        except BaseException:
            sink.abort()
            raise
        finally:
            result = book.close()
        return result
