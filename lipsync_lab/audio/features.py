"""Per-frame audio windows (reference §3.1) and their streaming computation.

Frame i (25 fps) uses the 10 encoder steps c−4 … c+5 around c = 2i (50 Hz), clamped to the available steps,
flattened to (10·5, 384) = (50, 384). Streaming keeps the audio received so far (bounded by `left_context_s` before
a batch's first step) and encodes one window from there to the end of what has arrived; how far past a batch's
frames that reaches is the batcher's look-ahead (`lookahead_frames`: the frames' own +5 steps plus any extra right
context), which in a live stream is latency. Indices are absolute times: a window starting at step s yields step j
at row j − s — there is no lead or lag (the fork's +2-frame shift, reference §3.2, cannot happen here), which the
tests check with an encoder stand-in whose output is its input's sample position.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from lipsync_lab.audio.whisper import SAMPLES_PER_STEP

LEFT, RIGHT = 4, 5        # steps before / after the centre step (LatentSync's audio_feat_length [2, 2] at 50 Hz)
STEPS_PER_FRAME = 2       # 50 Hz encoder steps per 25 fps frame

Encoder = Callable[[np.ndarray], torch.Tensor]  # samples → (T50, L, D)


def step_indices(frames: list[int] | np.ndarray, total_steps: int | None) -> np.ndarray:
    """(N, 10) absolute encoder-step indices per frame, clamped to [0, total_steps − 1] (no upper clamp if None)."""
    centre = np.asarray(frames, dtype=np.int64)[:, None] * STEPS_PER_FRAME
    idx = centre + np.arange(-LEFT, RIGHT + 1)[None, :]
    return np.clip(idx, 0, (total_steps - 1) if total_steps is not None else None)


def frame_windows(feats: torch.Tensor, frames, total_steps: int | None = None, offset: int = 0) -> torch.Tensor:
    """Gather (N, 50, D) per-frame features from `feats` (T, L, D) whose row 0 is absolute step `offset`."""
    idx = step_indices(frames, total_steps if total_steps is not None else offset + feats.shape[0]) - offset
    if idx.min() < 0 or idx.max() >= feats.shape[0]:
        raise ValueError(f"steps {idx.min() + offset}..{idx.max() + offset} outside the encoded window "
                         f"{offset}..{offset + feats.shape[0] - 1}")
    win = feats[torch.as_tensor(idx, device=feats.device)]  # (N, 10, L, D)
    return win.reshape(win.shape[0], -1, win.shape[-1])


def offline_features(encoder: Encoder, audio: np.ndarray, frames) -> torch.Tensor:
    """LatentSync's offline path: encode the whole clip once, then slice per frame."""
    feats = encoder(audio)
    return frame_windows(feats, frames, total_steps=len(audio) // SAMPLES_PER_STEP)


def lookahead_frames(lookahead_s: float) -> int:
    """Frames of audio a batch must wait for past its last frame: the window's +5 steps and the right context."""
    extra_steps = RIGHT + 1 + math.ceil(lookahead_s * 50)
    return math.ceil(extra_steps / STEPS_PER_FRAME)


class StreamingAudioFeatures:
    """Audio arrives in pushes; `features(frames)` encodes one window over the audio received so far."""

    def __init__(self, encoder: Encoder, left_context_s: float | None = 5.0):
        self.encoder = encoder
        self.left_steps = None if left_context_s is None else int(round(left_context_s * 50))
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # absolute sample index of _buf[0]
        self.ended = False

    @property
    def received_steps(self) -> int:
        return (self._buf_start + len(self._buf)) // SAMPLES_PER_STEP

    def push(self, samples: np.ndarray, end: bool = False) -> None:
        self._buf = np.concatenate([self._buf, np.asarray(samples, np.float32)])
        self.ended = self.ended or end

    def features(self, frames: list[int]) -> torch.Tensor:
        idx = step_indices(frames, None)
        lo, hi = int(idx.min()), int(idx.max())
        available = self.received_steps
        if hi >= available and not self.ended:
            raise RuntimeError(f"audio for step {hi} not received yet ({available} steps so far)")
        total = available if self.ended else None
        start = 0 if self.left_steps is None else max(0, lo - self.left_steps)
        stop = available  # everything received so far: the batcher decides how far ahead that reaches
        a = start * SAMPLES_PER_STEP - self._buf_start
        b = stop * SAMPLES_PER_STEP - self._buf_start
        if a < 0:
            raise RuntimeError("left context was already dropped from the buffer")
        feats = self.encoder(self._buf[a:b])
        out = frame_windows(feats, frames, total_steps=total, offset=start)
        self._drop_before(start)
        return out

    def _drop_before(self, step: int) -> None:
        """Later batches start no earlier than this one, so audio before its window start is not needed again."""
        cut = step * SAMPLES_PER_STEP - self._buf_start
        if cut > 0:
            self._buf = self._buf[cut:]
            self._buf_start += cut


def cosine_drift(streamed: torch.Tensor, offline: torch.Tensor) -> np.ndarray:
    """Per-frame cosine similarity between streamed and offline (N, 50, D) features."""
    a = streamed.reshape(streamed.shape[0], -1).double()
    b = offline.reshape(offline.shape[0], -1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1).cpu().numpy()
