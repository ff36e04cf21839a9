"""Voice activity of the stream (`vad=silero`): does a batch's span of audio hold speech? A batch without any is not
lip-synced (its frames pass through and diffusion is skipped).

The model is Silero VAD v6, the ONNX file faster-whisper ships (`faster_whisper/assets/silero_vad_v6.onnx`), run by
onnxruntime on one CPU thread through faster-whisper's own session (`faster_whisper.vad.get_vad_model`). It gives a
speech probability per 512-sample window (32 ms at 16 kHz), reading 64 samples of the window before and carrying an
LSTM state from window to window. faster-whisper's helpers are offline — `get_speech_timestamps` wants the whole
clip and the model's `__call__` starts each call from a zero state — so the stream is run here window by window:
each push evaluates the complete windows it brings in one call with the state carried over, which gives exactly the
whole clip's probabilities (tested).

Speech per window follows Silero's hysteresis: it starts at `threshold` and lasts while the probability stays at or
above `neg_threshold` (threshold − 0.15 unless set). A span has speech if any window within `pad_ms` of it does: the
mouth opens a little before the sound and closes after it (Silero's `speech_pad_ms`, applied to the question rather
than to the segments). Silero's minimum speech and silence durations are left out: both need audio from after the
span (latency), and the padding already bridges short pauses.

Memory stays bounded on any stream: only the hysteresis flags of the windows a later question can still reach are
kept (questions come with non-decreasing starts), and no samples beyond one partial window.
"""

from __future__ import annotations

import math

import numpy as np

from lipsync_lab.errors import LipsyncInputError

WINDOW = 512   # samples per model step at 16 kHz
CONTEXT = 64   # samples of the previous window each step also reads
SAMPLE_RATE = 16_000


def _session():
    """faster-whisper's shared onnxruntime session of the Silero model (loaded once per process)."""
    try:
        from faster_whisper.vad import get_vad_model
    except ImportError:
        raise LipsyncInputError("vad=silero", "needs faster-whisper (pip install 'lipsync_lab[audio]')") from None
    try:
        return get_vad_model().session
    except RuntimeError as e:  # its way of saying onnxruntime is missing
        raise LipsyncInputError("vad=silero", str(e)) from None


class SileroVAD:
    """`push(samples)` the stream's 16 kHz mono audio in order; `has_speech(start, end)` for absolute samples
    [start, end) that have all been pushed, with non-decreasing `start` from call to call."""

    def __init__(self, threshold: float = 0.5, neg_threshold: float | None = None, pad_ms: float = 200.0):
        if not 0 < threshold < 1:
            raise LipsyncInputError("vad.detector.threshold", f"must lie in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        self.neg_threshold = max(self.threshold - 0.15, 0.01) if neg_threshold is None else float(neg_threshold)
        self.pad = int(round(pad_ms * SAMPLE_RATE / 1000))
        self._session = _session()
        self._h = np.zeros((1, 1, 128), np.float32)  # the LSTM state after the last complete window
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)  # the last complete window's last samples
        self._pending = np.zeros(0, np.float32)  # pushed samples past the last complete window
        self._pushed = 0
        self._first = 0  # index of the first window whose flag is kept
        self._speech = np.zeros(0, bool)  # hysteresis flag per kept window
        self._triggered = False

    @property
    def held_windows(self) -> int:
        """Windows whose speech flag is kept (what the memory bound is about)."""
        return len(self._speech)

    def _probabilities(self, windows: np.ndarray, commit: bool) -> np.ndarray:
        """Speech probability of consecutive (n, 512) windows following the last complete one; with `commit`, they
        become the last complete ones (state and context carried on)."""
        contexts = np.concatenate([self._context[None], windows[:-1, -CONTEXT:]])
        probs, h, c = self._session.run(None, {"input": np.concatenate([contexts, windows], axis=1),
                                               "h": self._h, "c": self._c})
        if commit:
            self._h, self._c, self._context = h, c, windows[-1, -CONTEXT:].copy()
        return np.asarray(probs, np.float32).reshape(-1)

    def _hysteresis(self, probs: np.ndarray, commit: bool) -> np.ndarray:
        triggered, flags = self._triggered, np.empty(len(probs), bool)
        for i, p in enumerate(probs):
            triggered = p >= (self.neg_threshold if triggered else self.threshold)
            flags[i] = triggered
        if commit:
            self._triggered = triggered
        return flags

    def push(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, np.float32).reshape(-1)
        self._pushed += len(samples)
        pending = np.concatenate([self._pending, samples])
        n = len(pending) // WINDOW
        if n:
            flags = self._hysteresis(self._probabilities(pending[:n * WINDOW].reshape(n, WINDOW), True), True)
            self._speech = np.concatenate([self._speech, flags])
        self._pending = pending[n * WINDOW:].copy()

    def has_speech(self, start: int, end: int) -> bool:
        if end > self._pushed:
            raise ValueError(f"has_speech({start}, {end}): only {self._pushed} samples pushed")
        if end <= start:
            return False
        lo = max(0, start - self.pad) // WINDOW
        hi = math.ceil(min(self._pushed, end + self.pad) / WINDOW)  # windows [lo, hi) reach the padded span
        if lo < self._first:
            raise ValueError(f"has_speech({start}, {end}): starts before an earlier question's start")
        complete = self._first + len(self._speech)
        speech = bool(self._speech[lo - self._first:hi - self._first].any())
        if not speech and hi > complete and len(self._pending):
            # the span reaches into the partial last window: judge it zero-padded, without committing its state
            tail = np.zeros((1, WINDOW), np.float32)
            tail[0, :len(self._pending)] = self._pending
            speech = bool(self._hysteresis(self._probabilities(tail, False), False)[0])
        # no later question starts before `start`, so no later one reaches a window before `lo`
        self._speech = self._speech[lo - self._first:]
        self._first = lo
        return speech
