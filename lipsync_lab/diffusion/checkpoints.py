"""Official weights into the diffusers models: LatentSync's `latentsync_unet.pt` (reference §4.3, §6) and a local
diffusers VAE folder (file reading and strict fitting: `lipsync_lab.weights`).

Every way a file can be wrong — unreadable, truncated, a pickle that `weights_only` refuses, another LatentSync
version, missing / unexpected keys, other shapes — is one `LipsyncInputError` line naming a few offending keys.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers import UNetMotionModel

from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.weights import first_line, load_strict, read_checkpoint, rename, tensor_dict

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


def load_unet_checkpoint(unet: torch.nn.Module, path: str | Path, preset: str) -> None:
    """Load `latentsync_unet.pt` (or a .safetensors of the same keys) into the diffusers `unet` of `model=preset`,
    strictly (before it is wrapped: the keys are diffusers')."""
    obj = read_checkpoint(path)
    sd = tensor_dict(obj.get("state_dict", obj), path)  # upstream saves {"state_dict": ..., "global_step": ...}
    found = detect_version(sd)
    wanted = V15 if isinstance(unet, UNetMotionModel) else V10
    if found is not None and found != wanted:
        raise LipsyncInputError(path, f"a LatentSync {found} UNet, but model={preset} is a {wanted} "
                                      f"architecture: use {PRESETS[found]}")
    sd, origin = rename(sd, unet_key, path)
    load_strict(unet, sd, origin, path, f"model={preset}")


def load_vae_folder(cls: type, preset: str, path: str | Path) -> torch.nn.Module:
    """A local diffusers folder (config.json + weights), e.g. sd-vae-ft-mse → AutoencoderKL, taesd →
    AutoencoderTiny; it must hold `cls`, the class that the `vae` preset builds."""
    folder = Path(path)
    config = folder / "config.json"
    if not config.is_file():
        raise LipsyncInputError(folder, "not a diffusers model folder (no config.json)")
    try:
        found = json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise LipsyncInputError(config, f"not a diffusers config ({first_line(e)})") from None
    if found != cls.__name__:
        raise LipsyncInputError(folder, f"holds {found or 'a model of unknown class'}, but the '{preset}' VAE "
                                        f"preset builds {cls.__name__}")
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # diffusers raises OSError / ValueError / EnvironmentError for missing or bad weights
        raise LipsyncInputError(folder, f"cannot load the {cls.__name__} weights ({first_line(e)})") from None
