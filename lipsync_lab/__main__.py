"""`python -m lipsync_lab [overrides]`: one streamed run (or a sweep with -m), configured by Hydra (conf/)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lipsync_lab.errors import LipsyncInputError


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from lipsync_lab.run import run  # heavy imports after Hydra has parsed the command line (fast --help)

    try:
        summary = run(cfg, HydraConfig.get().runtime.output_dir)
    except LipsyncInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return summary["fps"]


if __name__ == "__main__":
    main()
