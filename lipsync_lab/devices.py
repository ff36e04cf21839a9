"""The torch device a run (and any stage with a `device` option) uses."""

from __future__ import annotations

import torch

from lipsync_lab.errors import LipsyncInputError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" → CUDA when available, else the CPU; "cuda…" where CUDA is missing is a one-line error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LipsyncInputError("device", f"{name} requested but CUDA is not available here")
    return torch.device(name)
