"""What every source gives the pipeline, and the batcher that cuts a stream into batches of N frames plus the
audio that has arrived.

A source conforms any input to the pipeline's clock: RGB uint8 frames at 25 fps and 16 kHz mono float32 audio,
exactly 640 samples per frame (sources: `media/file.py` for media files, `media/demo.py` for the embedded demo).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

FPS = 25
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


class Source(Protocol):
    name: str
    n_frames: int
    width: int
    height: int
    audio: np.ndarray  # float32, 16 kHz mono, exactly n_frames * 640 samples

    def frames(self) -> Iterator[np.ndarray]: ...

    def content_key(self) -> str:
        """Identifies the frames this source yields (for caches keyed by content, not by file name)."""
        ...


@dataclass
class Batch:
    index: int
    start: int                 # absolute index of the first frame
    frames: list[np.ndarray]   # RGB uint8 (H, W, 3)
    new_audio: np.ndarray      # samples that arrived with this batch (the stream's audio, in order)
    audio_ended: bool          # no more audio will arrive

    @property
    def frame_indices(self) -> list[int]:
        return list(range(self.start, self.start + len(self.frames)))


def iter_batches(source: Source, batch_frames: int, audio_lookahead_frames: int) -> Iterator[Batch]:
    """Cut the stream into batches; each carries the audio received up to `audio_lookahead_frames` past its end.

    In a live stream that look-ahead is latency (the batch waits for it); the audio stage cannot see further.
    """
    frames = source.frames()
    pushed = 0
    total = len(source.audio)
    for index, start in enumerate(range(0, source.n_frames, batch_frames)):
        chunk = []
        for _ in range(min(batch_frames, source.n_frames - start)):
            chunk.append(next(frames))
        until = min(total, (start + len(chunk) + audio_lookahead_frames) * SAMPLES_PER_FRAME)
        yield Batch(index, start, chunk, source.audio[pushed:until], until >= total)
        pushed = until
