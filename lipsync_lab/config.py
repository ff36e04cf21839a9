"""The project's Hydra config: where it lives, the run's variant name, and composing it from Python (tests,
notebooks) exactly as the CLI would.

The variant name is derived, not written: the chosen option of every config group of the primary defaults list
and every key set on the command line (or by a sweep) appear in it, so a new axis cannot be left out of it. Kept
out: the input (`source`, but for the frame size it is resized to), the experiment's own name, and run bookkeeping
(`NOT_VARIANT`). Always shown, for
readability: the model, VAE, scheduler, steps, guidance, batch, precision and device; other groups only where
they differ from the defaults, as `group=option`.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from lipsync_lab.paths import CONF_DIR, IN_CHECKOUT

HYDRA_CONFIG_PATH = str(CONF_DIR) if IN_CHECKOUT else "pkg://lipsync_lab.conf"

NOT_VARIANT = ("source", "experiment", "seed", "max_frames", "print_batches", "warmup_batches", "save_crops",
               "hydra", "variant")
VARIANT_AFTER_ALL = ("source.short_side", "source.pace", "source.convert")  # keys under NOT_VARIANT that change what a run measures
CORE = ("model", "vae", "scheduler", "+sgb", "precision", "device")  # "+sgb": steps, guidance, batch


@functools.cache
def default_choices() -> dict[str, str | None]:
    """The primary config's defaults list: group → default option."""
    out = {}
    for entry in OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").defaults, resolve=False):
        if isinstance(entry, dict):
            for group, option in entry.items():
                out[group.removeprefix("optional ").split("@")[0]] = option
    return out


def _token(text: str) -> str:
    """A folder-safe rendering of an override: paths by their file name, odd characters as '_'."""
    key, sep, value = text.partition("=")
    if "/" in value:
        value = value.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", key.lstrip("+~") + sep + value)


def variant_name(choices: dict, overrides: list[str], cfg) -> str:
    """choices: Hydra's runtime choices (group → option), overrides: the job's overrides, cfg: the config."""
    defaults = default_choices()
    parts = []
    for item in CORE:
        if item == "+sgb":
            parts.append(f"s{cfg.steps}-g{cfg.guidance_scale}-b{cfg.batch_frames}")
        else:
            node = cfg.get(item)
            parts.append(str(node.get("name") or choices[item]) if isinstance(node, DictConfig) else choices[item])
    for group, option in choices.items():
        if group in defaults and group not in CORE and group not in NOT_VARIANT and option != defaults[group]:
            parts.append(f"{group}={option}")
    for text in overrides:
        key = text.partition("=")[0].lstrip("+~")
        if key in choices or key in ("steps", "guidance_scale", "batch_frames"):
            continue
        if key.split(".")[0] in NOT_VARIANT and key not in VARIANT_AFTER_ALL:
            continue
        parts.append(_token(text))
    return "-".join(parts)


def _variant_resolver(*, _root_) -> str:
    if not HydraConfig.initialized():
        raise RuntimeError("the variant name needs Hydra's runtime choices: compose the config with "
                           "lipsync_lab.config.compose (or run python -m lipsync_lab)")
    hc = HydraConfig.get()
    return variant_name(dict(hc.runtime.choices), list(hc.overrides.task), _root_)


def _by_device(cpu_value, cuda_value, *, _root_):
    """`${lipsync_by_device:A,B}`: A on the CPU, B on CUDA (device=cuda, or device=auto where CUDA is present) —
    how an experiment sizes itself to the machine (e.g. the model of experiment=seed_table)."""
    device = _root_.hydra.runtime.choices.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return cuda_value if device.startswith("cuda") else cpu_value


# input files a sweep job's folder names by file stem; override_dirname leaves their keys out (their slashes would
# nest folders), so without these a sweep over clips made folders that differed only by job number
INPUT_KEYS = {"source.video": "video", "source.audio": "audio"}


def _job_dirname(override_dirname: str, *, _root_) -> str:
    """`${lipsync_job_dirname:${hydra.job.override_dirname}}`: a sweep job's folder name, Hydra's override_dirname
    then `video=<stem>` / `audio=<stem>` for the input files the job's overrides choose."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    settings = _root_.hydra.job.config.override_dirname
    overrides = OverridesParser.create().parse_overrides(list(_root_.hydra.overrides.task))
    inputs = [_token(f"{INPUT_KEYS[o.key_or_group]}{settings.kv_sep}{Path(str(o.value())).stem}")
              for o in overrides if o.key_or_group in INPUT_KEYS and not o.is_delete() and o.value() is not None]
    # override_dirname is the overrides' text as given: a value with a slash (a path under a key not excluded)
    # would nest the job's folder
    parts = [override_dirname.replace("/", "_")] if override_dirname else []
    return settings.item_sep.join(parts + sorted(inputs))


OmegaConf.register_new_resolver("lipsync_variant", _variant_resolver, replace=True)
OmegaConf.register_new_resolver("lipsync_by_device", _by_device, replace=True)
OmegaConf.register_new_resolver("lipsync_job_dirname", _job_dirname, replace=True)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The config of `python -m lipsync_lab <overrides>` (without the hydra node; `variant` already resolved)."""
    init = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3") if IN_CHECKOUT else \
        initialize_config_module("lipsync_lab.conf", version_base="1.3")
    with init:
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # as Hydra does for a job: ${hydra:...} and the variant resolve
    variant = cfg.variant
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.variant = variant
    return cfg


def run_config(overrides: list[str] | None, run_dir: str | Path) -> dict:
    """Compose and run one configuration into `run_dir`; returns its summary."""
    from lipsync_lab.run import run

    return run(compose(overrides), run_dir)
