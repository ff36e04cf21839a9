"""Hydra callbacks around a multirun (conf/config.yaml `hydra.callbacks`).

Before: with `face.cache` on, the clip's landmarks are computed once, before the first job, so every job reads them
and no job's face stage carries a one-off cost the others do not (the comparison's speed-ups stay about the axis
swept). After: the comparison table (lipsync_lab.compare). Throughout: the sweep's folder is remembered
(`SweepOutcome`), so the command can exit non-zero when a job did not finish (`unfinished_jobs`), whichever
launcher ran the jobs and whether or not the comparison callback is configured.
"""

from __future__ import annotations

import copy
import logging
import os
import time

import yaml
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from lipsync_lab.compare import compare, format_table, write_comparison

log = logging.getLogger(__name__)

__all__ = ["CompareAfterSweep", "LandmarksBeforeSweep", "SweepOutcome", "compare_sweep", "fill_landmark_cache",
           "unfinished_jobs"]

_SWEEPS: list[tuple[str, float]] = []  # the sweeps this process ran, and when each started (SweepOutcome)


def compare_sweep(sweep_dir: str) -> None:
    """Print the sweep's comparison table and write it into the sweep folder (python -m lipsync_lab.compare)."""
    try:
        table = compare(sweep_dir)
        csv, md = write_comparison(table, sweep_dir)
    except (SystemExit, Exception) as e:  # a report must not turn a finished sweep into a failed command
        log.warning("comparison of %s failed: %s", sweep_dir, e)
        return
    print(format_table(table))
    print(f"Comparison: {md} and {csv.name}")


class CompareAfterSweep(Callback):
    """When a multirun ends, print its comparison table and write it into the sweep folder."""

    def on_multirun_end(self, config, **kwargs) -> None:
        compare_sweep(config.hydra.sweep.dir)


class SweepOutcome(Callback):
    """Remembers the sweep's folder, for `unfinished_jobs` once Hydra is done."""

    def on_multirun_start(self, config, **kwargs) -> None:
        _SWEEPS.append((str(config.hydra.sweep.dir), time.time()))


def unfinished_jobs() -> list[str]:
    """'<job folder>: <status> (<why>)' for each job this process's sweeps ran that did not end `ok` (a folder
    written before the sweep started — a resumed search's earlier trials — is not this command's)."""
    from lipsync_lab.results import run_index

    out = []
    for sweep_dir, started in _SWEEPS:
        index = run_index(sweep_dir)
        for row in index[index["status"] != "ok"].itertuples():
            marker = os.path.join(row.run_dir, "summary.json")
            written = os.path.getmtime(marker) if os.path.exists(marker) else os.path.getmtime(row.run_dir)
            if written >= started:
                out.append(f"{os.path.basename(row.run_dir)}: {row.status}" + (f" ({row.error})" if row.error else ""))
    return out


def fill_landmark_cache(cfg) -> tuple[int, int]:
    """Run the configured landmark detector over the whole source into its cache. Returns (read, computed)."""
    from lipsync_lab.build import build_landmarks, build_source

    source = build_source(cfg)
    cache = build_landmarks(cfg, source)
    for index, frame in enumerate(source.frames()):
        cache(frame, index)
    cache.close()
    return cache.hits, cache.computed


def source_variants(config) -> list:
    """The config once per combination of the `source.*` values the sweep goes through (e.g. source.short_side:
    another frame size is other landmarks); just the config when it sweeps none. Simple comma lists only."""
    params = {k: str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items() if k.startswith("source.")}
    variants = [copy.deepcopy(config)]
    for key, values in params.items():
        expanded = []
        for cfg in variants:
            for value in values.split(","):
                one = copy.deepcopy(cfg)
                OmegaConf.update(one, key, yaml.safe_load(value), force_add=True)
                expanded.append(one)
        variants = expanded
    return variants


class LandmarksBeforeSweep(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        if not config.face.get("cache"):
            return
        start, computed = time.perf_counter(), 0
        for cfg in source_variants(config):
            try:
                computed += fill_landmark_cache(cfg)[1]
            except Exception as e:  # the jobs will compute (or report) it themselves
                log.warning("landmark cache not filled before the sweep: %s", e)
        if computed:
            log.info("Landmark cache: %d frames computed before the sweep (%.1f s); every job reads them",
                     computed, time.perf_counter() - start)
