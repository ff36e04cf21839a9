"""What every source gives the pipeline, and the batcher that cuts a stream into batches of N frames plus the
audio that has arrived.

A source conforms any input to the pipeline's clock: RGB uint8 frames at 25 fps and 16 kHz mono float32 audio,
exactly 640 samples per frame (sources: `media/file.py` for media files, `media/demo.py` for the embedded demo).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from torch.profiler import record_function

from lipsync_lab.media.pace import Pacer
from lipsync_lab.timing import LABELS

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
    read_s: float = 0.0        # seconds spent decoding its frames (waits for a paced source excluded)
    waited_s: float = 0.0      # seconds spent waiting for a paced source to release them
    began_s: float = 0.0       # when its reading began, since the stream started
    arrived_s: float = 0.0     # when its last frame and its audio look-ahead existed, since the stream started

    @property
    def frame_indices(self) -> list[int]:
        return list(range(self.start, self.start + len(self.frames)))


def iter_batches(source: Source, batch_frames: int, audio_lookahead_frames: int, pacer=None) -> Iterator[Batch]:
    """Cut the stream into batches; each carries the audio received up to `audio_lookahead_frames` past its end.

    In a live stream that look-ahead is latency (the batch waits for it); the audio stage cannot see further.
    With a pacer (media/pace.py) frames are taken no earlier than their release; without one, as fast as decoded.
    """
    pacer = pacer or Pacer("none", FPS)
    clock = pacer.clock
    frames = source.frames()
    pushed = 0
    total = len(source.audio)
    for index, start in enumerate(range(0, source.n_frames, batch_frames)):
        chunk, read_s, waited_s, began_s = [], 0.0, 0.0, pacer.elapsed()
        for i in range(start, min(start + batch_frames, source.n_frames)):
            t0 = clock.now()
            pacer.wait_for(i + 1)
            t1 = clock.now()
            with record_function(LABELS["read"]):  # the stage's profiler range (timed here: waits excluded)
                chunk.append(next(frames))
            waited_s += t1 - t0
            read_s += clock.now() - t1
        ready = min(source.n_frames, start + len(chunk) + audio_lookahead_frames)
        t0 = clock.now()
        pacer.wait_for(ready)  # the audio look-ahead's frames must have been captured too
        waited_s += clock.now() - t0
        until = min(total, ready * SAMPLES_PER_FRAME)
        yield Batch(index, start, chunk, source.audio[pushed:until], until >= total, read_s, waited_s,
                    began_s, pacer.elapsed())
        pushed = until
