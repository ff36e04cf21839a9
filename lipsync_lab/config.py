"""Compose the project's Hydra config from Python (tests, notebooks), exactly as the CLI would."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The resolved-on-access config for `python -m lipsync_lab <overrides>` (without the hydra node's run dir)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def run_config(overrides: list[str] | None, run_dir: str | Path) -> dict:
    """Compose and run one configuration into `run_dir`; returns its summary."""
    from lipsync_lab.run import run

    return run(compose(overrides), run_dir)
