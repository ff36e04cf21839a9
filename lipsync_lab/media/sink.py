"""Sinks take the processed frames and the audio that plays with them; each `sink` option builds one with
`(path, width, height)` plus its own settings: `mp4` (media/mp4.py) or `none` (here).

    write(frames, audio)  per batch, in order
    close()               after the last batch: the output is complete
    abort()               on failure: leave nothing that looks complete
"""

from __future__ import annotations

import numpy as np


class NullSink:
    """Discards frames (benchmarks that must not pay for encoding)."""

    def __init__(self, path: str | None = None, width: int = 0, height: int = 0):
        self.path = None  # writes nothing

    def write(self, frames: list[np.ndarray], audio: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
