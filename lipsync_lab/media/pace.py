"""Pacing: a source released at the speed of a live capture (`source.pace=realtime`), on an injectable clock.

Frame i and its 640 audio samples exist once their capture interval is over: at `start + (i + 1) / fps`. A paced
stream waits for that moment before handing the frame on; an unpaced stream (`pace=none`, the default, for
throughput) takes each frame as soon as it is decoded. Latency is measured against these release times, so a
stream that falls behind shows it as latency growing, never as frames that "arrived late".

The clock is a parameter so that pacing, latency bookkeeping and re-ordering are tested with a deterministic fake
clock (tests/test_stream.py), not with sleeps.
"""

from __future__ import annotations

import threading
import time

from lipsync_lab.errors import LipsyncInputError

PACES = ("none", "realtime")


class MonotonicClock:
    """The wall clock (perf_counter) and a sleep until a point of it."""

    def now(self) -> float:
        return time.perf_counter()

    def sleep_until(self, t: float) -> None:
        wait = t - time.perf_counter()
        if wait > 0:
            time.sleep(wait)


class FakeClock:
    """A clock that moves only when told (`advance`) or when someone sleeps on it. Thread-safe."""

    def __init__(self, t: float = 0.0):
        self._t = float(t)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def advance(self, dt: float) -> None:
        with self._lock:
            self._t += dt

    def sleep_until(self, t: float) -> None:
        with self._lock:
            self._t = max(self._t, t)


class Pacer:
    """Release times of a stream's frames, relative to `start` (set when the stream starts)."""

    def __init__(self, pace: str, fps: int, clock=None):
        if pace not in PACES:
            raise LipsyncInputError("source.pace", f"{pace!r} is not one of {', '.join(PACES)}")
        self.realtime = pace == "realtime"
        self.fps = fps
        self.clock = clock or MonotonicClock()
        self.start = self.clock.now()

    def release_s(self, frame: int) -> float:
        """When frame `frame` (and its audio) exists, in seconds since the stream started."""
        return (frame + 1) / self.fps

    def wait_for(self, frames: int) -> None:
        """Block until the first `frames` frames of the stream exist (no-op when unpaced)."""
        if self.realtime and frames > 0:
            self.clock.sleep_until(self.start + self.release_s(frames - 1))

    def elapsed(self) -> float:
        return self.clock.now() - self.start
