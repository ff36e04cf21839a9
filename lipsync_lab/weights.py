"""Checkpoint reading shared by every model (design §1: no stage imports another stage for it).

`read_checkpoint` opens a `.safetensors` or `torch.save` file (pickles with weights_only=True); `rename` maps its
keys; `load_strict` loads them with every misfit — missing, unexpected, other shapes — reported as one
`LipsyncInputError` line naming a few offending keys.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from lipsync_lab.errors import LipsyncInputError


def first_line(error: BaseException) -> str:
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
            raise LipsyncInputError(path, f"not a readable safetensors file ({first_line(e)})") from None
    try:
        # mmap keeps a 5 GB checkpoint out of RAM until copied into the model; only the zip format supports it
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # a bad file surfaces as RuntimeError, KeyError, EOFError, UnpicklingError, ...
        if "weights only load failed" in str(e).lower():
            raise LipsyncInputError(path, _weights_only_refusal(e)) from None
        raise LipsyncInputError(path, f"not a readable PyTorch checkpoint, truncated or corrupt? "
                                      f"({first_line(e)})") from None
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
