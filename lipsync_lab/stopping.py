"""Stopping a run cleanly on a signal: Ctrl-C (SIGINT), a scheduler's SIGTERM, or submitit's SIGUSR2.

Shared GPU nodes interrupt jobs: a user presses Ctrl-C, Slurm sends SIGTERM at a time limit or a pre-emption (and
SIGKILL some seconds later), submitit forwards SIGUSR2 ahead of a time limit. Python's defaults either raise
KeyboardInterrupt wherever the main thread happens to be (deep inside a model call, with a traceback) or kill the
process outright (SIGTERM: no summary, the frames already encoded lost). While a run streams, `StopOnSignal`
turns the first of these signals into a request: the executor finishes the batch it is writing and stops at that
batch boundary, the sink closes normally (a playable mp4 of every frame written so far, with its audio), and the
run records `status: interrupted`. A second signal means "now": it raises `HardStop` in the main thread at once.

Handlers can only be installed from the main thread (Python's rule); elsewhere (a run started from a worker
thread) the context does nothing and signals keep their default behaviour. The previous handlers are put back on
exit — submitit's own SIGUSR2/SIGTERM handlers, for one, are back in place once the run is over.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR2", None)) if s is not None)


class HardStop(BaseException):
    """A second signal: stop at once (a BaseException, like KeyboardInterrupt, so no stage swallows it)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name} received twice: stopped at once")


class StopRequest:
    """Set once a stop was asked for; executors poll it at batch boundaries (thread-safe)."""

    def __init__(self):
        self._event = threading.Event()
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None


class StopOnSignal:
    """`with StopOnSignal() as stop:` — SIGINT/SIGTERM/SIGUSR2 set `stop`; a second one raises HardStop."""

    def __init__(self, signals: tuple[int, ...] = SIGNALS):
        self.signals = signals
        self.request = StopRequest()
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.request.is_set():
            raise HardStop(signum)
        self.request.set(signum)
        # the log (stdout and the run's log file), so stderr keeps the one line that says how the run ended
        log.warning("%s: stopping after the batch being written (send it again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        else:
            log.debug("not the main thread: signals keep their default handling during this run")
        return self.request

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
