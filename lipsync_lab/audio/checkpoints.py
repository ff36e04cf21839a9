"""OpenAI's whisper `tiny.pt` (`dims` + `model_state_dict`, OpenAI key names) → transformers' `WhisperEncoder`
(reference §3.1, §6). Only the encoder is used; the decoder's tensors in the file are skipped."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.weights import load_strict, read_checkpoint, rename, tensor_dict

# whisper tiny's encoder, the only size LatentSync's UNets take (384-d features)
TINY = dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80,
            max_source_positions=1500)

# OpenAI encoder name → transformers WhisperEncoder name (same maths: pre-LN blocks, GELU MLP, q/k/v/out projections)
WHISPER_RENAMES = (
    (r"^encoder\.positional_embedding$", "embed_positions.weight"),
    (r"^encoder\.ln_post\.", "layer_norm."),
    (r"^encoder\.blocks\.(\d+)\.attn\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn\.out\.", r"layers.\1.self_attn.out_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn_ln\.", r"layers.\1.self_attn_layer_norm."),
    (r"^encoder\.blocks\.(\d+)\.mlp\.0\.", r"layers.\1.fc1."),
    (r"^encoder\.blocks\.(\d+)\.mlp\.2\.", r"layers.\1.fc2."),
    (r"^encoder\.blocks\.(\d+)\.mlp_ln\.", r"layers.\1.final_layer_norm."),
    (r"^encoder\.", ""),  # conv1, conv2
)


def whisper_key(key: str) -> str | None:
    if key.startswith("decoder."):
        return None
    for pattern, replacement in WHISPER_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def whisper_config(dims: Mapping, path: str | Path) -> WhisperConfig:
    """OpenAI's `dims` → the encoder's config; it must be tiny's, the only size LatentSync's UNets take (384-d)."""
    try:
        enc = dict(d_model=dims["n_audio_state"], encoder_layers=dims["n_audio_layer"],
                   encoder_attention_heads=dims["n_audio_head"], encoder_ffn_dim=4 * dims["n_audio_state"],
                   num_mel_bins=dims["n_mels"], max_source_positions=dims["n_audio_ctx"])
    except (KeyError, TypeError) as e:
        raise LipsyncInputError(path, f"its 'dims' lack the audio encoder's sizes ({e})") from None
    if enc != TINY:
        raise LipsyncInputError(path, f"not whisper tiny (encoder d_model {enc['d_model']}, "
                                      f"{enc['encoder_layers']} layers); LatentSync's UNets take tiny's 384-d features")
    return WhisperConfig(**enc)


def load_whisper_encoder(path: str | Path) -> WhisperEncoder:
    obj = read_checkpoint(path)
    if not {"dims", "model_state_dict"} <= obj.keys():
        raise LipsyncInputError(path, "not an OpenAI whisper checkpoint (expected 'dims' and 'model_state_dict')")
    encoder = WhisperEncoder(whisper_config(obj["dims"], path))
    sd, origin = rename(tensor_dict(obj["model_state_dict"], path), whisper_key, path)
    load_strict(encoder, sd, origin, path, "the whisper tiny encoder")
    return encoder.eval()
