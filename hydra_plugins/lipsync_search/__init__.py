"""lipsync_lab's own Hydra sweeper: a multi-objective Optuna study (sustained fps up, drift down) run through any
Hydra launcher (`hydra/sweeper=lipsync_search`; conf/experiment/search.yaml). Hydra finds it by scanning the
`hydra_plugins` namespace package: `config.py` registers its config, `sweeper.py` holds the class. The search's
logic is lipsync_lab.search."""
