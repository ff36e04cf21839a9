"""Official weights into the diffusers models: LatentSync's `latentsync_unet.pt` (reference §4.3, §6) and a local
diffusers VAE folder. Also the file reading and strict-fit checks that the whisper loader shares.

Every way a file can be wrong — unreadable, truncated, a pickle that `weights_only` refuses, another LatentSync
version, missing / unexpected keys, other shapes — is one `LipsyncInputError` line naming a few offending keys.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from diffusers import UNetMotionModel
from hydra.utils import get_class
from omegaconf import DictConfig
from safetensors.torch import load_file

from lipsync_lab.errors import LipsyncInputError

V10, V15 = "v1.0", "v1.5/v1.6"
PRESETS = {V10: "model=latentsync_v1", V15: "model=latentsync_v15 (256 px) or model=latentsync_v16 (512 px)"}

# LatentSync name → diffusers name (reference §4.3), applied in order. v1.0 calls its audio cross-attention
# `audio_cross_attn`; the motion modules are AnimateDiff's layout. Each LatentSync attention block carries its own
# copy of the sinusoidal table, diffusers' block one `pos_embed` for both: the copies land on the same key (and must
# be equal).
UNET_RENAMES = (
    (r"\.audio_cross_attn\.attn\.", ".attn2."),
    (r"\.audio_cross_attn\.norm\.", ".norm2."),
    (r"\.temporal_transformer\.", "."),
    (r"\.attention_blocks\.[01]\.pos_encoder\.pe$", ".pos_embed.pe"),
    (r"\.attention_blocks\.0\.", ".attn1."),
    (r"\.attention_blocks\.1\.", ".attn2."),
    (r"\.norms\.0\.", ".norm1."),
    (r"\.norms\.1\.", ".norm2."),
    (r"\.ff_norm\.", ".norm3."),
)


def _first_line(error: BaseException) -> str:
    """A library error's first sentence: enough to say what broke, short enough for one line."""
    text = str(error).strip().splitlines()
    return text[0].split(". ")[0][:160] if text else type(error).__name__


def _weights_only_refusal(error: Exception) -> str:
    found = re.search(r"GLOBAL (\S+)", str(error))
    what = f"a pickled {found.group(1)}" if found else "pickled Python objects"
    return (f"holds {what}, which torch.load(weights_only=True) refuses to load because unpickling it could run "
            f"code; re-save only its tensors")


def read_checkpoint(path: str | Path) -> Mapping:
    """The object stored in a `.safetensors` file or a `torch.save` file (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise LipsyncInputError(path, "no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error type, or OSError
            raise LipsyncInputError(path, f"not a readable safetensors file ({_first_line(e)})") from None
    try:
        # mmap keeps a 5 GB checkpoint out of RAM until copied into the model; only the zip format supports it
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # a bad file surfaces as RuntimeError, KeyError, EOFError, UnpicklingError, ...
        if "weights only load failed" in str(e).lower():
            raise LipsyncInputError(path, _weights_only_refusal(e)) from None
        raise LipsyncInputError(path, f"not a readable PyTorch checkpoint, truncated or corrupt? "
                                      f"({_first_line(e)})") from None
    if not isinstance(obj, Mapping):
        raise LipsyncInputError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def tensor_dict(sd: object, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict; other entries (e.g. `global_step` saved beside them) are metadata."""
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)} if isinstance(sd, Mapping) else {}
    if not tensors:
        raise LipsyncInputError(path, "no state dict of tensors found")
    return tensors


def rename(sd: Mapping[str, torch.Tensor], rename_key: Callable[[str], str | None],
           path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Apply `rename_key` (None = drop) to every key → (renamed state dict, renamed key → key in the file).
    Two file keys may share a target only if their tensors are equal (copies of one table)."""
    out, origin = {}, {}
    for key, value in sd.items():
        new = rename_key(key)
        if new is None:
            continue
        if new in out and not (out[new].shape == value.shape and torch.equal(out[new], value)):
            raise LipsyncInputError(path, f"keys {origin[new]} and {key} both map to {new} but differ")
        out[new], origin[new] = value, key
    return out, origin


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", … ({len(keys) - n} more)" if len(keys) > n else "")


def load_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], origin: Mapping[str, str],
                path: str | Path, what: str) -> None:
    """`module.load_state_dict(sd, strict=True)`, with every misfit reported as one line (file key names where
    the file has the key, model names for the missing ones)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [origin[k] for k in sd if k not in expected]
    shapes = [f"{origin[k]} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in sd and sd[k].shape != v.shape]
    problems = [f"{len(keys)} {label} ({_few(keys)})" for label, keys in (
        ("model tensors missing from the file", missing), ("unexpected keys", unexpected),
        ("shape mismatches (file vs model)", shapes)) if keys]
    if problems:
        raise LipsyncInputError(path, f"does not fit {what}: " + "; ".join(problems))
    module.load_state_dict(sd, strict=True)


def unet_key(key: str) -> str:
    for pattern, replacement in UNET_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def detect_version(keys) -> str | None:
    """LatentSync version family from the key names: v1.0 names its audio cross-attention `audio_cross_attn`,
    v1.5/v1.6 have motion modules (their keys are identical; only the training resolution differs)."""
    keys = list(keys)
    v10 = any(".audio_cross_attn." in k for k in keys)
    v15 = any(".motion_modules." in k for k in keys)
    return V10 if v10 and not v15 else V15 if v15 and not v10 else None


def load_unet_checkpoint(unet: torch.nn.Module, path: str | Path, model_cfg: DictConfig) -> None:
    """Load `latentsync_unet.pt` (or a .safetensors of the same keys) into `unet`, strictly."""
    obj = read_checkpoint(path)
    sd = tensor_dict(obj.get("state_dict", obj), path)  # upstream saves {"state_dict": ..., "global_step": ...}
    found = detect_version(sd)
    wanted = V15 if isinstance(unet, UNetMotionModel) else V10
    if found is not None and found != wanted:
        raise LipsyncInputError(path, f"a LatentSync {found} UNet, but model={model_cfg.name} is a {wanted} "
                                      f"architecture: use {PRESETS[found]}")
    sd, origin = rename(sd, unet_key, path)
    load_strict(unet, sd, origin, path, f"model={model_cfg.name}")


def load_vae_folder(vae_cfg: DictConfig, path: str | Path) -> torch.nn.Module:
    """A local diffusers folder (config.json + weights), e.g. sd-vae-ft-mse → AutoencoderKL, taesd →
    AutoencoderTiny; it must hold the class that the `vae` preset builds."""
    folder = Path(path)
    config = folder / "config.json"
    if not config.is_file():
        raise LipsyncInputError(folder, "not a diffusers model folder (no config.json)")
    cls = get_class(vae_cfg.arch.full._target_)
    try:
        found = json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise LipsyncInputError(config, f"not a diffusers config ({_first_line(e)})") from None
    if found != cls.__name__:
        raise LipsyncInputError(folder, f"holds {found or 'a model of unknown class'}, but the '{vae_cfg.name}' VAE "
                                        f"preset builds {cls.__name__}")
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # diffusers raises OSError / ValueError / EnvironmentError for missing or bad weights
        raise LipsyncInputError(folder, f"cannot load the {cls.__name__} weights ({_first_line(e)})") from None
