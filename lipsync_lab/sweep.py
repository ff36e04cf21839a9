"""Hydra callbacks around a multirun (conf/config.yaml `hydra.callbacks`).

Before: with `face.cache` on, the clip's landmarks are computed once, before the first job, so every job reads them
and no job's face stage carries a one-off cost the others do not (the comparison's speed-ups stay about the axis
swept). After: the comparison table (lipsync_lab.compare).
"""

from __future__ import annotations

import logging
import time

from hydra.experimental.callback import Callback

from lipsync_lab.compare import CompareAfterSweep

log = logging.getLogger(__name__)

__all__ = ["CompareAfterSweep", "LandmarksBeforeSweep", "fill_landmark_cache"]


def fill_landmark_cache(cfg) -> tuple[int, int]:
    """Run the configured landmark detector over the whole source into its cache. Returns (read, computed)."""
    from lipsync_lab.build import build_landmarks, build_source

    source = build_source(cfg)
    cache = build_landmarks(cfg, source)
    for index, frame in enumerate(source.frames()):
        cache(frame, index)
    cache.close()
    return cache.hits, cache.computed


class LandmarksBeforeSweep(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        if not config.face.get("cache"):
            return
        start = time.perf_counter()
        try:
            read, computed = fill_landmark_cache(config)
        except Exception as e:  # the jobs will compute (or report) it themselves
            log.warning("landmark cache not filled before the sweep: %s", e)
            return
        if computed:
            log.info("Landmark cache: %d frames computed before the sweep (%.1f s); every job reads them",
                     computed, time.perf_counter() - start)
