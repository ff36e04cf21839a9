"""Checkpoint reading shared by every model (design §1: no stage imports another stage for it).

`read_checkpoint` opens a `.safetensors` or `torch.save` file (pickles with weights_only=True); `rename` maps its
keys; `load_strict` loads them with every misfit — missing, unexpected, other shapes — reported as one
`LipsyncInputError` line naming a few offending keys.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.serialization import MAGIC_NUMBER

from lipsync_lab.errors import LipsyncInputError


def first_line(error: BaseException) -> str:
    """A library error's first sentence: enough to say what broke, short enough for one line."""
    text = str(error).strip().splitlines()
    return text[0].split(". ")[0][:160] if text else type(error).__name__


# How a file torch.save wrote begins: its zip format with a zip local-file header (what torch's own `_is_zipfile`
# looks for), its legacy format with MAGIC_NUMBER pickled on its own, in whichever protocol pickle_protocol= chose.
_ZIP_HEAD = b"PK\x03\x04"
_LEGACY_HEADS = tuple({pickle.dumps(MAGIC_NUMBER, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)})

# torch.load(weights_only=True) wraps *every* UnpicklingError in "Weights only load failed…", random bytes included
# (their first byte is seldom an opcode its unpickler knows). A refused object reference reads, in torch's
# _weights_only_unpickler: "Unsupported global: GLOBAL mod.Name was not an allowed global by default" or
# "Trying to load unsupported GLOBAL mod.Name whose module mod is blocked". The name must also be a dotted Python
# name, so that garbage which happens to decode as a GLOBAL opcode is not taken for a pickled class.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*) (?:was not an allowed global|whose module \S+ is blocked)")


def _begins_like_torch_save(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(max(map(len, _LEGACY_HEADS)))
    return head.startswith((_ZIP_HEAD, *_LEGACY_HEADS))


def _torch_reason(error: Exception) -> str:
    """torch.load's own reason, without the weights_only wrapper (whose first line is the same for every file)."""
    text = str(error)
    for wrapper in ("WeightsUnpickler error:", "Weights only load failed."):
        if wrapper in text:
            text = text.split(wrapper, 1)[1]
            break
    return first_line(Exception(text))


def _unreadable(path: Path, reason: str) -> LipsyncInputError:
    return LipsyncInputError(path, f"not a readable PyTorch checkpoint, truncated or corrupt? ({reason})")


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
    if path.stat().st_size == 0:
        raise _unreadable(path, "empty file")
    if not _begins_like_torch_save(path):
        # not handed to torch.load: it would wrap the garbage's first bad opcode in its weights_only message (and
        # warn about the "pickle protocol" a stray 0x80 byte announces)
        raise _unreadable(path, "starts like neither torch.save format: no zip header, no legacy magic number")
    try:
        # mmap keeps a 5 GB checkpoint out of RAM until copied into the model; only the zip format supports it
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # a bad file surfaces as RuntimeError, KeyError, EOFError, UnpicklingError, ...
        refused = _REFUSED_GLOBAL.search(str(e))
        if refused:  # a well-formed checkpoint that pickles a class or function beside its tensors
            raise LipsyncInputError(path, f"holds a pickled {refused.group(1)}, which torch.load(weights_only=True) "
                                          f"refuses to load because unpickling it could run code; re-save only "
                                          f"its tensors") from None
        raise _unreadable(path, _torch_reason(e)) from None
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
