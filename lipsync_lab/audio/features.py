"""Per-frame audio windows (reference §3.1) and their streaming computation.

Frame i (25 fps) uses the 10 encoder steps c−4 … c+5 around c = 2i (50 Hz), clamped to the available steps,
flattened to (10·5, 384) = (50, 384). A stream keeps the audio received so far; for each batch a front end (the
`audio` option) encodes a window that covers the batch's steps and ends at the audio received — how far past the
batch's frames that reaches is the batcher's look-ahead (`lookahead_frames`: the frames' own +5 steps plus any extra
right context), which in a live stream is latency. Indices are absolute times: a window starting at step s yields
step j at row j − s — there is no lead or lag (the fork's +2-frame shift, reference §3.2, cannot happen here), which
the tests check with an encoder stand-in whose output is its input's sample position.

Front ends:
- `SegmentAligned` (`audio=whisper`, LatentSync-exact where causality allows): windows aligned to upstream's 30-s
  segments, so every step gets the positional embedding of its place in its segment and the encoder attends over the
  segment as upstream's does; a segment whose audio has all arrived is encoded once and kept (then exact); the
  current one is re-encoded each batch over the audio received so far, the unseen rest zero-padded as upstream pads
  its last segment.
- `SlidingWindow` (`audio=whisper_window`, `audio=faster_whisper`): a short window (`window_s`) ending at the audio
  received, so the cost follows the window, not 30 s; its steps get the positions of their place in their 30-s
  segment (`positions=segment`, the default: on random weights the per-frame cosine to offline is 0.98 against 0.58
  when positions restart at the window, `positions=window`). Its drift is measured (scripts/audio_drift.py).
- `ContextWindow`: any `encoder(samples, start_step)` on [first step − left context, received) (test stand-ins).

The log-mel normalisation (clamp to max − 8) uses the running max over every mel frame received so far, each frame
computed with its full STFT support (so a frame's value is upstream's): once the loudest stretch has arrived that
is upstream's whole-clip max; before, quiet frames may be clamped differently. With the whole clip up front the
stream equals the offline features exactly (tested, also across a 30-s segment boundary).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from lipsync_lab.audio.whisper import HOP, N_FFT, SAMPLES_PER_STEP, WINDOW_FRAMES, LogMel

LEFT, RIGHT = 4, 5        # steps before / after the centre step (LatentSync's audio_feat_length [2, 2] at 50 Hz)
STEPS_PER_FRAME = 2       # 50 Hz encoder steps per 25 fps frame

Encoder = Callable[[np.ndarray, int], torch.Tensor]  # (samples, first step) → (T50, L, D)
SEGMENT_STEPS = WINDOW_FRAMES // 2  # encoder steps in one of upstream's 30-s segments (1500)


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


STFT_MARGIN = 2 * HOP  # samples kept before a mel window: a frame's STFT reaches 200 samples (N_FFT / 2) either side


class StreamingAudioFeatures:
    """Audio arrives in pushes; `features(frames)` asks the front end for the steps those frames need.

    Keeps the received audio from the earliest step a later batch can need, and the running log-mel max."""

    def __init__(self, front_end, device="cpu"):
        self.front_end = front_end
        self.logmel = LogMel().to(device)
        self.mel_max = -math.inf
        self._max_frames = 0       # mel frames whose value the running max already includes
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0        # absolute sample index of _buf[0] (a multiple of SAMPLES_PER_STEP)
        self.ended = False

    @property
    def received(self) -> int:
        return self._buf_start + len(self._buf)

    @property
    def received_steps(self) -> int:
        return self.received // SAMPLES_PER_STEP

    def push(self, samples: np.ndarray, end: bool = False) -> None:
        self._buf = np.concatenate([self._buf, np.asarray(samples, np.float32)])
        self.ended = self.ended or end
        self._update_max()

    def _update_max(self) -> None:
        """Add the mel frames whose STFT support has fully arrived (all of them once the audio has ended: the last
        ones reflect-padded at the true end, as upstream's) to the running max."""
        last = self.received // HOP if self.ended else max(0, (self.received - N_FFT // 2) // HOP + 1)
        last = min(last, self.received // HOP)
        if last <= self._max_frames or self.received < N_FFT:  # (an STFT needs more than its half window)
            return
        mel = self.mel(self._max_frames, last)
        self.mel_max = max(self.mel_max, float(mel.max()))
        self._max_frames = last

    def mel(self, first: int, last: int, normalise: bool = False) -> torch.Tensor:
        """Log-mel frames [first, last) (100 Hz) of the received audio, each computed from its own samples with the
        real audio around it — reflect-padded only at the stream's start, and at the received end, which is upstream's
        padding once the stream has ended (before that, those last frames are what causality allows)."""
        lo = max(0, first * HOP - STFT_MARGIN)
        hi = min(self.received, last * HOP + STFT_MARGIN)
        if lo < self._buf_start:
            raise RuntimeError("audio before the window was already dropped from the buffer")
        chunk = torch.from_numpy(self._buf[lo - self._buf_start:hi - self._buf_start]).to(self.logmel.window.device)
        frames = self.logmel.log_mel(chunk)[:, first - lo // HOP:last - lo // HOP]
        return self.logmel.normalize(frames, self.mel_max) if normalise else frames

    def window_mel(self, first_step: int, last_step: int) -> torch.Tensor:
        """Normalised log-mel of encoder steps [first_step, last_step): 2 frames per step."""
        return self.mel(2 * first_step, 2 * last_step, normalise=True)

    def samples(self, first_step: int, last_step: int) -> np.ndarray:
        a = first_step * SAMPLES_PER_STEP - self._buf_start
        if a < 0:
            raise RuntimeError("audio before the window was already dropped from the buffer")
        return self._buf[a:last_step * SAMPLES_PER_STEP - self._buf_start]

    def features(self, frames: list[int]) -> torch.Tensor:
        idx = step_indices(frames, None)
        lo, hi = int(idx.min()), int(idx.max())
        available = self.received_steps
        if hi >= available and not self.ended:
            raise RuntimeError(f"audio for step {hi} not received yet ({available} steps so far)")
        feats, offset = self.front_end(self, lo, available)
        out = frame_windows(feats, frames, total_steps=available if self.ended else None, offset=offset)
        self._drop_before(min(self.front_end.keep_from(lo, available), self._max_frames // 2 - 1))
        return out

    def _drop_before(self, step: int) -> None:
        """Later batches start no earlier than this one: audio the front end will not need again is let go (with the
        STFT margin kept)."""
        cut = max(0, step * SAMPLES_PER_STEP - STFT_MARGIN) // SAMPLES_PER_STEP * SAMPLES_PER_STEP - self._buf_start
        if cut > 0:
            self._buf = self._buf[cut:]
            self._buf_start += cut


class ContextWindow:
    """`encoder(samples, start_step)` on the steps [first needed − left context, received): the simplest front end
    (whatever the encoder does with the window is its own business — test stand-ins use it)."""

    def __init__(self, encoder: Encoder, left_context_s: float | None = 5.0):
        self.encoder = encoder
        self.left_steps = None if left_context_s is None else int(round(left_context_s * 50))

    def _start(self, lo: int) -> int:
        return 0 if self.left_steps is None else max(0, lo - self.left_steps)

    def __call__(self, stream: StreamingAudioFeatures, lo: int, available: int) -> tuple[torch.Tensor, int]:
        start = self._start(lo)
        return self.encoder(stream.samples(start, available), start), start

    def keep_from(self, lo: int, available: int) -> int:
        return self._start(lo)


def encoder_plan(encoder, mel_frames: int) -> list[tuple]:
    """The audio stage's FLOP plan (flops.py counts it): one encoder pass on `mel_frames`, or none where the encoder
    runs outside torch (CTranslate2: `counted_by_torch = False`), where the counter cannot see it."""
    return [("whisper", "encode", mel_frames)] if encoder.counted_by_torch else []


class SegmentAligned:
    """`audio=whisper`: upstream's segmenting kept in a stream (see the module docstring)."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.done: dict[int, torch.Tensor] = {}  # segment → its (1500, 5, 384) features, encoded with all its audio

    def flop_plan(self, batch_frames: int, lookahead: int) -> dict[str, list[tuple]]:
        """Per steady batch: the current 30-s segment, zero-padded to 30 s, whatever the batch (a batch crossing a
        segment boundary encodes two: the usual batch's count is given)."""
        return dict(audio=encoder_plan(self.encoder, WINDOW_FRAMES))

    def __call__(self, stream: StreamingAudioFeatures, lo: int, available: int) -> tuple[torch.Tensor, int]:
        parts = []
        first_segment = lo // SEGMENT_STEPS
        for seg in range(first_segment, (available - 1) // SEGMENT_STEPS + 1):
            if seg not in self.done:
                start, stop = seg * SEGMENT_STEPS, min((seg + 1) * SEGMENT_STEPS, available)
                feats = self.encoder.encode(stream.window_mel(start, stop), pad_to=WINDOW_FRAMES)
                # complete: every step's audio and its STFT margin arrived (or the stream ended)
                if stop == (seg + 1) * SEGMENT_STEPS and (available > stop or stream.ended):
                    self.done[seg] = feats
                parts.append(feats)
            else:
                parts.append(self.done[seg])
        for seg in [s for s in self.done if s < first_segment]:  # no later batch reaches back there
            del self.done[seg]
        return torch.cat(parts), first_segment * SEGMENT_STEPS

    def keep_from(self, lo: int, available: int) -> int:
        """The first segment not yet encoded with all its audio."""
        seg = lo // SEGMENT_STEPS
        while seg in self.done:
            seg += 1
        return seg * SEGMENT_STEPS


class SlidingWindow:
    """`audio=whisper_window` / `faster_whisper`: `window_s` seconds ending at the audio received (widened to the
    batch's first step if that lies further back), zero-padded to `window_s` when `pad` (a fixed shape), with
    positions from the window's place in its 30-s segment (`positions=segment`) or from 0 (`positions=window`)."""

    def __init__(self, encoder, window_s: float = 2.0, pad: bool = True, positions: str = "segment"):
        if positions not in ("window", "segment"):
            raise ValueError(f"audio.front_end.positions={positions!r}: window | segment")
        self.encoder = encoder
        self.window_steps = int(round(window_s * 50))
        self.pad, self.positions = pad, positions

    def _start(self, lo: int, available: int) -> int:
        return min(lo, max(0, available - self.window_steps))

    def flop_plan(self, batch_frames: int, lookahead: int) -> dict[str, list[tuple]]:
        """Per steady batch: from the batch's first frame's first step to the audio received (its frames and the
        look-ahead), widened to `window_s` when padded."""
        span = STEPS_PER_FRAME * (batch_frames + lookahead) + LEFT
        steps = max(span, self.window_steps) if self.pad else span
        return dict(audio=encoder_plan(self.encoder, 2 * steps))

    def __call__(self, stream: StreamingAudioFeatures, lo: int, available: int) -> tuple[torch.Tensor, int]:
        start = self._start(lo, available)
        steps = available - start
        offset = start % SEGMENT_STEPS if self.positions == "segment" else 0
        offset = min(offset, SEGMENT_STEPS - max(steps, self.window_steps if self.pad else steps))
        pad_to = 2 * max(steps, self.window_steps) if self.pad else None
        return self.encoder.encode(stream.window_mel(start, available), pad_to=pad_to, position_offset=offset), start

    def keep_from(self, lo: int, available: int) -> int:
        return self._start(lo, available)


def cosine_drift(streamed: torch.Tensor, offline: torch.Tensor) -> np.ndarray:
    """Per-frame cosine similarity between streamed and offline (N, 50, D) features."""
    a = streamed.reshape(streamed.shape[0], -1).double()
    b = offline.reshape(offline.shape[0], -1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1).cpu().numpy()
