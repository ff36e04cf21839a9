"""The sequential executor: each batch is read, processed and written before the next is read."""

from __future__ import annotations

from lipsync_lab.executors.stream import StreamBook, StreamResult, StreamSettings
from lipsync_lab.media.source import iter_batches
from lipsync_lab.pipeline import LipsyncPipeline, run_stage


class SequentialExecutor:
    overlaps_stages = False  # one stage at a time: a batch's time is the sum of its stages'

    def stream(self, source, pipeline: LipsyncPipeline, sink, settings: StreamSettings, recorder=None,
               on_batch=None) -> StreamResult:
        """Source → batches → pipeline → sink, one BatchTimer per batch. The sink is closed on success and after a
        stop request (every batch written so far is in it), aborted on any failure (no output that looks
        complete)."""
        book = StreamBook(source, settings, overlapping=False, recorder=recorder, on_batch=on_batch)
        completed = False
        batches = iter_batches(source, settings.batch_frames, settings.lookahead, book.pacer)
        try:
            while not book.stop_requested:  # checked at each batch boundary: a stop keeps what was written
                batch = next(batches, None)
                if batch is None:
                    break
                works = [book.open(batch)]
                for _, stage in pipeline.stages():
                    works = run_stage(stage, works)
                for work in works:  # usually the batch itself; none, or several, when a stage holds batches back
                    book.write(sink, work)
            if not book.stop_requested:  # the stream ended: what a stage still holds goes through the rest
                stages = pipeline.stages()
                for i, (key, _) in enumerate(stages):
                    works = pipeline.finish(key)
                    for _, later in stages[i + 1:]:
                        works = run_stage(later, works)
                    for work in works:
                        book.write(sink, work)
            book.finish_sink(sink)
            completed = True
        except BaseException:
            sink.abort()
            raise
        finally:
            result = book.close(completed)
        return result
