"""The pipelined executor: every stage on a worker of its own, neighbouring batches overlapping.

    read ──q──▶ face ──q──▶ audio ──q──▶ diffusion ──q──▶ restore ──q──▶ write (the calling thread)

Queues hold at most `queue_batches` batches, so a slow stage holds back the reader (bounded memory, and a paced
stream shows the backlog as latency). Stages with order-dependent state — reading, landmark tracking, the audio
buffer, the diffusion noise — have one worker each; restore, which has none, may have several, and a reorder
step hands its batches on in stream order, so output frames equal the sequential executor's.

Timing stays attributable under overlap: on CUDA each worker issues its work on a CUDA stream of its own and a
stage boundary waits for that stream only (timing.device_sync(stream_only=True)) — a device-wide synchronise would
make each stage wait for the others' kernels and serialise the overlap being measured. A stage's time is then its
own work plus what contention for the CPU cores or the device costs it, which is the honest figure under overlap.

An exception in any stage stops every worker (each waits on its queues with a timeout and checks a stop flag),
the sink is aborted, all threads are joined, and the first error is raised as it was (one line for bad input).
A stop request (stopping.py: SIGINT/SIGTERM) instead ends the stream after the batch being written: the reader
takes no new batch, the batches in flight behind it are dropped, and the sink is closed with every frame written.
"""

from __future__ import annotations

import contextlib
import queue
import threading

import torch

from lipsync_lab.executors.stream import StreamBook, StreamResult, StreamSettings
from lipsync_lab.media.source import iter_batches
from lipsync_lab.pipeline import LipsyncPipeline, run_stage

_DONE = object()   # end of stream, passed down the queues
_POLL_S = 0.05     # how often a blocked worker checks whether the stream was stopped


class _Stopped(Exception):
    """Raised inside a worker when another one failed: unwinds it without an error of its own."""


class _Stream:
    """The queues, the stop flag and the first error of one pipelined stream."""

    def __init__(self, n_queues: int, depth: int):
        self.queues = [queue.Queue(maxsize=depth) for _ in range(n_queues)]
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
        self.stop.set()

    def put(self, q: queue.Queue, item) -> None:
        while not self.stop.is_set():
            try:
                return q.put(item, timeout=_POLL_S)
            except queue.Full:
                pass
        raise _Stopped

    def get(self, q: queue.Queue):
        while not self.stop.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                pass
        raise _Stopped


class _InOrder:
    """Hands a multi-worker stage's finished batches downstream in stream order."""

    def __init__(self, stream: _Stream, out: queue.Queue, first: int = 0):
        self.stream, self.out = stream, out
        self.next, self.pending = first, {}
        self.lock = threading.Lock()

    def emit(self, index: int, item) -> None:
        with self.lock:
            self.pending[index] = item
            while self.next in self.pending:
                self.stream.put(self.out, self.pending.pop(self.next))
                self.next += 1


class PipelinedExecutor:
    overlaps_stages = True  # neighbouring batches' stages run at once: summed stage times are work, not wall time

    def __init__(self, queue_batches: int = 2, restore_workers: int = 1):
        self.queue_batches = int(queue_batches)
        self.restore_workers = int(restore_workers)

    def stream(self, source, pipeline: LipsyncPipeline, sink, settings: StreamSettings, recorder=None,
               on_batch=None) -> StreamResult:
        book = StreamBook(source, settings, overlapping=True, recorder=recorder, on_batch=on_batch)
        device = torch.device(settings.device)
        stages = pipeline.stages()
        stream = _Stream(len(stages) + 1, self.queue_batches)
        qs = stream.queues

        def read():
            batches = iter_batches(source, settings.batch_frames, settings.lookahead, book.pacer)
            while not book.stop_requested:  # a stop request: no new batch enters the pipeline
                batch = next(batches, None)
                if batch is None:
                    break
                stream.put(qs[0], book.open(batch))
            stream.put(qs[0], _DONE)

        def worker(key, fn, q_in, in_order: _InOrder, siblings: list[int]):
            while (work := stream.get(q_in)) is not _DONE:
                released = run_stage(fn, [work])  # usually the batch itself (a stage may hold batches back)
                if device.type == "cuda":  # the next stage reads this one's tensors from another stream
                    torch.cuda.current_stream(device).synchronize()
                for done in released:
                    in_order.emit(done.batch.index, done)
            with in_order.lock:  # the last worker of a stage to see the end passes it on
                siblings[0] -= 1
                last = siblings[0] == 0
            if last and not book.stop_requested:  # what the stage still holds, then the end
                for done in pipeline.finish(key):
                    if device.type == "cuda":
                        torch.cuda.current_stream(device).synchronize()
                    in_order.emit(done.batch.index, done)
            stream.put(q_in if not last else in_order.out, _DONE)  # siblings see the end too

        threads = [self._thread("read", read, stream, device)]
        for i, (key, fn) in enumerate(stages):
            workers = self.restore_workers if key == "restore" else 1
            in_order, siblings = _InOrder(stream, qs[i + 1]), [workers]
            threads += [self._thread(f"{key}-{w}", worker, stream, device, key, fn, qs[i], in_order, siblings)
                        for w in range(workers)]
        for t in threads:
            t.start()
        completed = False
        try:
            # the calling thread writes: the sink, the batch records and the run's per-batch hook stay on it
            with torch.inference_mode():
                while (work := stream.get(qs[-1])) is not _DONE:
                    book.write(sink, work)
                    # a stop request ends the stream at this batch boundary: the batches still in flight behind it
                    # are dropped (each worker stops after its current call), so the stop comes within one stage
                    if book.stop_requested:
                        break
        except _Stopped:
            pass  # a worker failed: its error is the stream's
        except BaseException as e:
            stream.fail(e)
        finally:
            stream.stop.set()
            for t in threads:
                t.join()
            if stream.error is None:
                book.finish_sink(sink)
                completed = True
            result = book.close(completed)
        if stream.error is not None:
            sink.abort()
            raise stream.error
        return result

    @staticmethod
    def _thread(name: str, fn, stream: _Stream, device: torch.device, *args) -> threading.Thread:
        def body():
            # grad mode is per thread: each worker runs inference like the sequential path; on CUDA each issues
            # its work on its own stream (see the module's docstring)
            cuda = device.type == "cuda"
            with torch.inference_mode(), (torch.cuda.stream(torch.cuda.Stream(device)) if cuda
                                          else contextlib.nullcontext()):
                try:
                    fn(*args)
                except _Stopped:
                    pass
                except BaseException as e:
                    stream.fail(e)

        return threading.Thread(target=body, name=f"lipsync-{name}", daemon=True)
