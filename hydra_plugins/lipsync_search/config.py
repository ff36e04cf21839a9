"""The sweeper's config, registered as `hydra/sweeper=lipsync_search` (imported by Hydra's plugin scan at every
start, so it imports nothing heavy). No `from __future__ import annotations`: the scan runs this module before it is
in sys.modules, where dataclasses would look string annotations up."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class LipsyncSearchConf:
    _target_: str = "hydra_plugins.lipsync_search.sweeper.LipsyncSearchSweeper"
    # the study's name in its storage; a later search under the same name resumes it
    study_name: str = "search"
    # an SQLAlchemy URL or a file path for SQLite; null: <hydra.sweep.dir>/study.db
    storage: Optional[str] = None
    # the number of trials the study holds when the search ends (failed ones included): a resumed study runs the rest
    n_trials: int = 20
    # trials asked and launched together: 1 on one machine (honest timings), more with a launcher that runs jobs in
    # parallel (hydra/launcher=slurm)
    n_jobs: int = 1
    # any Optuna sampler (instantiated by Hydra); NSGA-II, seeded
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.NSGAIISampler", "seed": 0,
                                                  "population_size": 8})
    # trials run first, each the base settings with these values, e.g. [{compile: none}, {compile: unet}]
    enqueue: List[Any] = field(default_factory=list)
    # the second objective beside sustained fps: drift (mean |Δ| of the mouth crops against a reference run of the
    # base settings, down) | sync (SyncNet's LSE-C of each trial's output, up: needs quality=syncnet with the
    # official quality.syncnet=syncnet_v2.model and an output video, sink=mp4)
    objective: str = "drift"
    # the search space, key → entry (lipsync_lab/search.py: choice(a, b), int(lo, hi), float(lo, hi),
    # tag(log, …), or one fixed value); the command line's overrides are entries too and win per key
    params: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="lipsync_search", node=LipsyncSearchConf,
                             provider="lipsync_search")
