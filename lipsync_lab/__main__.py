"""`python -m lipsync_lab [overrides]`: one streamed run (or a sweep with -m), configured by Hydra (conf/).
`python -m lipsync_lab --help` lists the config groups (the variant axes) and their options."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lipsync_lab.config import HYDRA_CONFIG_PATH
from lipsync_lab.errors import LipsyncInputError

log = logging.getLogger("lipsync_lab")


@hydra.main(version_base="1.3", config_path=HYDRA_CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from lipsync_lab.run import run  # heavy imports after Hydra has parsed the command line (fast --help)

    hc = HydraConfig.get()
    try:
        summary = run(cfg, hc.runtime.output_dir)
    except LipsyncInputError as e:
        if hc.mode == RunMode.MULTIRUN:  # one bad job of a sweep: say so, marked failed in its folder; go on
            log.error("error: %s", e)
            return None
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return summary["fps"]


if __name__ == "__main__":
    main()
