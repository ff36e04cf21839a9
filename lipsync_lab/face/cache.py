"""Per-frame landmarks of a clip, computed once and reused by later runs of the same clip (`face.cache=true`).

A sweep over diffusion variants streams one clip many times; its landmarks do not change, so the first run writes
them and the others read them. The cache file is keyed by the clip's content (`source.content_key()`: the video's
SHA-256, so a different clip under the same name never hits) and by the detector's settings, and holds the
landmarks of frames 0…n−1 as the detector produced them in order (tracked and smoothed; NaN = no face). Frames past
n are computed with the detector's tracking state resumed from frame n−1, then added. A machine without dlib's
68-point model can run a clip whose landmarks are all in the cache: the detector never loads its model then.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def cache_path(folder: str | os.PathLike, content_key: str, settings: dict) -> Path:
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(folder) / f"{content_key}-{tag}.npz"


class LandmarkCache:
    """Wraps a landmark detector: `cache(rgb, index)` reads frame `index` from the cache or computes it."""

    def __init__(self, detector, path: str | os.PathLike):
        self.detector = detector
        self.path = Path(path)
        self._landmarks: list[np.ndarray | None] = []
        if self.path.is_file():
            with np.load(self.path) as f:
                self._landmarks = [None if np.isnan(l).any() else l for l in f["landmarks"]]
            log.info("Landmark cache %s: %d frames", self.path.name, len(self._landmarks))
        self._cached = len(self._landmarks)  # frames 0.._cached-1 came from the file
        self.hits = 0      # frames read from the cache
        self.computed = 0  # frames computed and added

    def __call__(self, rgb: np.ndarray, index: int) -> np.ndarray | None:
        if index < len(self._landmarks):
            self.hits += 1
            return self._landmarks[index]
        if index != len(self._landmarks):
            raise RuntimeError(f"landmark cache: frame {index} requested after frame {len(self._landmarks) - 1}; "
                               f"frames must come in order")
        if index == self._cached and index > 0:  # first computed frame: resume tracking where the cache ends
            self.detector.prev = self._landmarks[index - 1]
        landmarks = self.detector(rgb, index)
        self._landmarks.append(landmarks)
        self.computed += 1
        return landmarks

    def close(self) -> None:
        """Write the cache if this run added frames (atomically: a reader never sees half a file)."""
        if not self.computed:
            return
        arr = np.stack([np.full((68, 2), np.nan) if l is None else np.asarray(l, np.float64)
                        for l in self._landmarks])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".partial.npz")
        np.savez(tmp, landmarks=arr)
        os.replace(tmp, self.path)
        log.info("Landmark cache %s: wrote %d frames (%d new)", self.path.name, len(arr), self.computed)
