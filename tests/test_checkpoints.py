"""Official file layouts → diffusers / transformers models (reference §3.1, §4.3, §6); bad files → one line.

The LatentSync-layout files are written here the way upstream writes them (`torch.save({"state_dict": sd,
"global_step": 0})`) from a reduced model, by renaming diffusers keys the inverse way; a handful of literal
LatentSync / OpenAI key names (from the reference) are checked too, so that a renaming bug made symmetrically in
the loader and in this inverse cannot pass.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import random
import re

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from safetensors.torch import save_file
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from lipsync_lab.audio.checkpoints import load_whisper_encoder
from lipsync_lab.audio.whisper import TINY, WhisperFeatures
from lipsync_lab.build import build_unet, build_vae
from lipsync_lab.config import compose
from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.weights import read_checkpoint

SMALL = ["model.unet.block_out_channels=[32,64]", "model.unet.down_block_types=[CrossAttnDownBlock2D,DownBlock2D]",
         "model.unet.up_block_types=[UpBlock2D,CrossAttnUpBlock2D]", "model.unet.norm_num_groups=8"]
TINY_DIMS = dict(n_mels=80, n_vocab=51865, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                 n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)


def small_cfg(preset: str, checkpoint=None, seed=0):
    return compose([f"model={preset}", *SMALL, f"model.checkpoint={checkpoint or 'null'}", f"seed={seed}"])


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor random and distinct (default inits repeat ones, zeros and identical tables), so a tensor that
    lands on the wrong key is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            t.copy_(torch.randn(t.shape, generator=g))
    return module


# -- inverse renamings (diffusers → LatentSync / OpenAI), written independently of the loader --------------------
def to_latentsync(sd: dict[str, torch.Tensor], version: str) -> dict[str, tuple[str, torch.Tensor]]:
    """LatentSync key → (diffusers key, tensor)."""
    out = {}
    for key, t in sd.items():
        m = re.match(r"(.*\.motion_modules\.\d+\.)(.*)", key)
        if m:  # AnimateDiff layout: everything under temporal_transformer, attention/norm lists, ff_norm
            head, rest = m.groups()
            if rest.endswith("pos_embed.pe"):  # LatentSync: a copy of the table in each attention block
                block = rest[:-len("pos_embed.pe")]
                for i in (0, 1):
                    out[f"{head}temporal_transformer.{block}attention_blocks.{i}.pos_encoder.pe"] = (key, t.clone())
                continue
            for a, b in (("attn1.", "attention_blocks.0."), ("attn2.", "attention_blocks.1."), ("norm1.", "norms.0."),
                         ("norm2.", "norms.1."), ("norm3.", "ff_norm.")):
                rest = rest.replace(a, b)
            out[f"{head}temporal_transformer.{rest}"] = (key, t)
        elif version == "v1.0":  # spatial transformer blocks: attn2/norm2 are the audio cross-attention
            out[re.sub(r"(transformer_blocks\.\d+\.)(attn2|norm2)\.",
                       lambda m: f"{m[1]}audio_cross_attn.{'attn' if m[2] == 'attn2' else 'norm'}.", key)] = (key, t)
        else:
            out[key] = (key, t)
    return out


def to_openai(sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """OpenAI whisper key → (transformers WhisperEncoder key, tensor)."""
    names = {"self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
             "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln", "fc1": "mlp.0", "fc2": "mlp.2",
             "final_layer_norm": "mlp_ln"}
    out = {}
    for key, t in sd.items():
        m = re.match(r"layers\.(\d+)\.(.*)\.(weight|bias)$", key)
        if m:
            new = f"encoder.blocks.{m[1]}.{names[m[2]]}.{m[3]}"
        else:
            new = {"embed_positions.weight": "encoder.positional_embedding"}.get(key, "encoder." + key)
            new = new.replace("encoder.layer_norm.", "encoder.ln_post.")
        out[new] = (key, t)
    return out


# -- UNet files ---------------------------------------------------------------------------------------------------
# literal names from the reference (§4.3, §6) → where they must land in the diffusers model
V10_LITERALS = {
    "conv_in.weight": "conv_in.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.audio_cross_attn.attn.to_k.weight":
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "up_blocks.1.attentions.2.transformer_blocks.0.audio_cross_attn.norm.bias":
        "up_blocks.1.attentions.2.transformer_blocks.0.norm2.bias",
    "down_blocks.0.resnets.1.norm2.weight": "down_blocks.0.resnets.1.norm2.weight",
}
V15_LITERALS = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight":
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_q.weight":
        "down_blocks.0.motion_modules.0.transformer_blocks.0.attn2.to_q.weight",
    "down_blocks.1.motion_modules.1.temporal_transformer.transformer_blocks.0.norms.0.weight":
        "down_blocks.1.motion_modules.1.transformer_blocks.0.norm1.weight",
    "up_blocks.0.motion_modules.2.temporal_transformer.transformer_blocks.0.ff_norm.bias":
        "up_blocks.0.motion_modules.2.transformer_blocks.0.norm3.bias",
    "up_blocks.1.motion_modules.2.temporal_transformer.proj_out.weight": "up_blocks.1.motion_modules.2.proj_out.weight",
    "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe":
        "down_blocks.0.motion_modules.0.transformer_blocks.0.pos_embed.pe",
}


def latentsync_file(tmp_path, preset: str, seed: int = 1, name="latentsync_unet.pt", literals=None):
    """(path, source model, {LatentSync key: (diffusers key, tensor)}) for a reduced model saved like upstream."""
    source = build_unet(small_cfg(preset))
    randomized(source.unet, seed)
    layout = to_latentsync(source.unet.state_dict(), "v1.0" if preset == "latentsync_v1" else "v1.5")
    sd = {k: t for k, (_, t) in layout.items()}
    for key in literals or {}:
        assert key in sd, key  # the inverse renaming produces upstream's real names
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_file(sd, path)
    else:
        torch.save({"state_dict": sd, "global_step": 0}, path)
    return path, source, layout


@pytest.mark.parametrize("preset, literals", [("latentsync_v1", V10_LITERALS), ("latentsync_v15", V15_LITERALS)])
def test_unet_checkpoint_lands_every_tensor(tmp_path, preset, literals):
    path, source, layout = latentsync_file(tmp_path, preset, literals=literals)
    loaded = build_unet(small_cfg(preset, path, seed=2))
    theirs = loaded.unet.state_dict()
    for ls_key, (key, tensor) in layout.items():
        assert torch.equal(theirs[key], tensor), ls_key
    for ls_key, where in literals.items():
        assert torch.equal(theirs[where], layout[ls_key][1]), ls_key
    # and so the function: one call on 2 clips (the CFG halves) of 3 frames
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 3, 13, 8, 8, generator=g), torch.randn(2, 3, 50, 384, generator=g)
    torch.testing.assert_close(loaded(x, 500, ctx), source(x, 500, ctx), rtol=0, atol=0)


def test_unet_checkpoint_variants_safetensors_and_bare_dict(tmp_path):
    path, _, layout = latentsync_file(tmp_path, "latentsync_v15", name="unet.safetensors")
    key = "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_v.weight"
    expected = layout[key][1]
    got = build_unet(small_cfg("latentsync_v15", path)).unet.down_blocks[1].motion_modules[0].transformer_blocks[0]
    assert torch.equal(got.attn1.to_v.weight, expected)
    bare = tmp_path / "bare.pt"
    torch.save({k: t for k, (_, t) in layout.items()}, bare)
    got = build_unet(small_cfg("latentsync_v15", bare)).unet.down_blocks[1].motion_modules[0].transformer_blocks[0]
    assert torch.equal(got.attn1.to_v.weight, expected)


# -- whisper tiny.pt ----------------------------------------------------------------------------------------------
WHISPER_LITERALS = {
    "encoder.conv1.weight": "conv1.weight",
    "encoder.positional_embedding": "embed_positions.weight",
    "encoder.blocks.0.attn.query.weight": "layers.0.self_attn.q_proj.weight",
    "encoder.blocks.3.attn.key.weight": "layers.3.self_attn.k_proj.weight",
    "encoder.blocks.0.attn_ln.weight": "layers.0.self_attn_layer_norm.weight",
    "encoder.blocks.1.mlp.0.weight": "layers.1.fc1.weight",
    "encoder.ln_post.bias": "layer_norm.bias",
}


def openai_encoder_ref(sd: dict[str, torch.Tensor], mel: torch.Tensor) -> list[torch.Tensor]:
    """OpenAI's AudioEncoder from its own tensor names: GELU conv stem + positions, pre-LN blocks with q and k each
    scaled by d_head^-1/4; returns the stem output and each block's output (before ln_post)."""
    w = {k: v.float() for k, v in sd.items()}
    x = F.gelu(F.conv1d(mel, w["encoder.conv1.weight"], w["encoder.conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, w["encoder.conv2.weight"], w["encoder.conv2.bias"], stride=2, padding=1)).transpose(1, 2)
    x = x + w["encoder.positional_embedding"][: x.shape[1]]
    outs, d, heads = [x], x.shape[-1], TINY_DIMS["n_audio_head"]
    for i in range(TINY_DIMS["n_audio_layer"]):
        p = f"encoder.blocks.{i}."
        h = F.layer_norm(x, (d,), w[p + "attn_ln.weight"], w[p + "attn_ln.bias"])
        q = F.linear(h, w[p + "attn.query.weight"], w[p + "attn.query.bias"])
        k = F.linear(h, w[p + "attn.key.weight"])
        v = F.linear(h, w[p + "attn.value.weight"], w[p + "attn.value.bias"])
        q, k, v = (t.unflatten(-1, (heads, d // heads)).transpose(1, 2) for t in (q, k, v))
        scale = (d // heads) ** -0.25
        att = torch.softmax((q * scale) @ (k * scale).transpose(-1, -2), dim=-1) @ v
        x = x + F.linear(att.transpose(1, 2).flatten(-2), w[p + "attn.out.weight"], w[p + "attn.out.bias"])
        h = F.layer_norm(x, (d,), w[p + "mlp_ln.weight"], w[p + "mlp_ln.bias"])
        h = F.gelu(F.linear(h, w[p + "mlp.0.weight"], w[p + "mlp.0.bias"]))
        h = F.linear(h, w[p + "mlp.2.weight"], w[p + "mlp.2.bias"])
        outs.append(x + h)
        x = outs[-1]
    return outs


def whisper_file(tmp_path, **changes):
    source = randomized(WhisperEncoder(WhisperConfig(**TINY)), seed=5)
    layout = {k: (key, t.half()) for k, (key, t) in to_openai(source.state_dict()).items()}  # OpenAI ships fp16
    sd = {k: t for k, (_, t) in layout.items()}
    sd["decoder.token_embedding.weight"] = torch.randn(16, 384).half()  # the decoder is in the file, not used
    sd["decoder.blocks.0.cross_attn.query.weight"] = torch.randn(384, 384).half()
    path = tmp_path / "tiny.pt"
    torch.save({"dims": {**TINY_DIMS, **changes}, "model_state_dict": sd}, path)
    return path, layout, sd


def test_whisper_tiny_pt_lands_every_tensor_and_computes_openais_features(tmp_path):
    path, layout, sd = whisper_file(tmp_path)
    for key in WHISPER_LITERALS:
        assert key in sd, key
    encoder = load_whisper_encoder(path)
    theirs = encoder.state_dict()
    for oa_key, (key, tensor) in layout.items():
        assert torch.equal(theirs[key], tensor.float()), oa_key
    for oa_key, where in WHISPER_LITERALS.items():
        assert torch.equal(theirs[where], sd[oa_key].float()), oa_key
    mel = torch.randn(1, 80, 200, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = WhisperFeatures(encoder).stack(mel)[0]  # (100, 5, 384)
    expected = torch.stack(openai_encoder_ref(sd, mel), dim=2)[0]
    assert ours.shape == (100, 5, 384)
    assert float((ours - expected).norm() / expected.norm()) < 1e-4  # measured 4e-6; a wrong mapping gives O(1)


# -- local VAE folders ----------------------------------------------------------------------------------------------
def test_vae_folder_loads_the_preset_class_and_refuses_another(tmp_path):
    cfg = compose(["vae=kl"])
    source = randomized(instantiate(cfg.vae.arch.small), seed=7)
    source.save_pretrained(tmp_path / "sd-vae-ft-mse")
    cfg.vae.path = str(tmp_path / "sd-vae-ft-mse")
    loaded = build_vae(cfg).model
    assert type(loaded).__name__ == "AutoencoderKL"
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    taesd = compose(["vae=tiny", f"vae.path={tmp_path / 'sd-vae-ft-mse'}"])
    with pytest.raises(LipsyncInputError, match="holds AutoencoderKL, but the 'taesd' VAE preset builds "
                                                "AutoencoderTiny$"):
        build_vae(taesd)


# -- bad files: one clear line each ---------------------------------------------------------------------------------
def _truncated(tmp_path):
    path, _, _ = latentsync_file(tmp_path, "latentsync_v1")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "latentsync_v1", path


def _safetensors_truncated(tmp_path):
    path, _, _ = latentsync_file(tmp_path, "latentsync_v1", name="unet.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    return "latentsync_v1", path


def _pickled_object(tmp_path):
    path, _, layout = latentsync_file(tmp_path, "latentsync_v1")
    torch.save({"state_dict": {k: t for k, (_, t) in layout.items()}, "args": argparse.Namespace(lr=1e-5)}, path)
    return "latentsync_v1", path


def _edited(change, preset="latentsync_v1"):
    def make(tmp_path):
        path, _, layout = latentsync_file(tmp_path, preset)
        sd = {k: t for k, (_, t) in layout.items()}
        change(sd)
        torch.save({"state_dict": sd, "global_step": 0}, path)
        return preset, path
    return make


def _drop_audio_cross_attn(sd):  # then no version can be told from the keys: a plain misfit
    for key in [k for k in sd if ".audio_cross_attn." in k]:
        del sd[key]


PE_COPY = "up_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"


def _wrong_version(file_preset, model_preset):
    def make(tmp_path):
        return model_preset, latentsync_file(tmp_path, file_preset)[0]
    return make


def _not_a_file(tmp_path):
    return "latentsync_v1", tmp_path / "checkpoints" / "latentsync_unet.pt"


def _not_a_dict(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    return "latentsync_v1", tmp_path / "list.pt"


@pytest.mark.parametrize("make, message", [
    (_truncated, r"not a readable PyTorch checkpoint, truncated or corrupt\?"),
    (_safetensors_truncated, r"not a readable safetensors file"),
    (_pickled_object, r"holds a pickled argparse\.Namespace, which torch\.load\(weights_only=True\) refuses"),
    (_wrong_version("latentsync_v15", "latentsync_v1"),
     r"a LatentSync v1\.5/v1\.6 UNet, but model=latentsync_v1 is a v1\.0 architecture: use model=latentsync_v15"),
    (_wrong_version("latentsync_v1", "latentsync_v15"),
     r"a LatentSync v1\.0 UNet, but model=latentsync_v15 is a v1\.5/v1\.6 architecture: use model=latentsync_v1$"),
    (_edited(lambda sd: sd.pop("conv_out.bias")), r"1 model tensors missing from the file \(conv_out\.bias\)"),
    (_edited(lambda sd: sd.update({"down_blocks.0.extra.weight": torch.zeros(2)})),
     r"1 unexpected keys \(down_blocks\.0\.extra\.weight\)"),
    (_edited(lambda sd: sd.update({"conv_in.weight": torch.zeros(32, 9, 3, 3)})),
     r"1 shape mismatches \(file vs model\) \(conv_in\.weight \(32, 9, 3, 3\) vs \(32, 13, 3, 3\)\)"),
    (_edited(_drop_audio_cross_attn),
     r"model tensors missing from the file \(down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.norm2\.weight, "
     r".*, … \(\d+ more\)\)"),
    (_edited(lambda sd: sd[PE_COPY].mul_(2), "latentsync_v15"),  # diffusers has one table for both attentions
     r"keys .*attention_blocks\.0\.pos_encoder\.pe and .*attention_blocks\.1\.pos_encoder\.pe both map to "
     r"up_blocks\.0\.motion_modules\.1\.transformer_blocks\.0\.pos_embed\.pe but differ"),
    (_not_a_file, r"no such file"),
    (_not_a_dict, r"holds a list, not a dict of tensors"),
], ids=["truncated", "safetensors-truncated", "pickled-object", "v15-file-v1-model", "v1-file-v15-model", "missing",
        "unexpected", "shape", "no-audio-cross-attn", "pe-copies-differ", "no-file", "not-a-dict"])
def test_bad_unet_checkpoints_are_one_line_errors(tmp_path, make, message):
    preset, path = make(tmp_path)
    with pytest.raises(LipsyncInputError) as info:
        build_unet(small_cfg(preset, path))
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: ")
    assert re.search(message, text), text


@pytest.mark.parametrize("obj, message", [
    ({"model_state_dict": {}}, r"not an OpenAI whisper checkpoint \(expected 'dims' and 'model_state_dict'\)"),
    ({"dims": {**TINY_DIMS, "n_audio_state": 768, "n_audio_layer": 12}, "model_state_dict": {}},
     r"not whisper tiny \(encoder d_model 768, 12 layers\)"),
])
def test_bad_whisper_checkpoints_are_one_line_errors(tmp_path, obj, message):
    torch.save(obj, tmp_path / "tiny.pt")
    with pytest.raises(LipsyncInputError, match=message) as info:
        load_whisper_encoder(tmp_path / "tiny.pt")
    assert "\n" not in str(info.value)


def test_whisper_checkpoint_with_a_missing_block_is_an_error(tmp_path):
    _, _, sd = whisper_file(tmp_path)
    for key in [k for k in sd if k.startswith("encoder.blocks.3.")]:
        del sd[key]
    torch.save({"dims": TINY_DIMS, "model_state_dict": sd}, tmp_path / "tiny.pt")
    with pytest.raises(LipsyncInputError, match=r"does not fit the whisper tiny encoder: 15 model tensors missing "
                                                r"from the file \(layers\.3\.self_attn\.k_proj\.weight"):
        load_whisper_encoder(tmp_path / "tiny.pt")


def test_vae_folder_without_config_is_an_error(tmp_path):
    cfg = compose(["vae=kl", f"vae.path={tmp_path}"])
    with pytest.raises(LipsyncInputError, match=r"not a diffusers model folder \(no config\.json\)$"):
        build_vae(cfg)


# -- corrupt files are not "pickled objects" (issue #14) -----------------------------------------------------------
# torch.load(weights_only=True) wraps any unpickling error of random bytes in its "Weights only load failed" message;
# only a well-formed torch.save file whose unpickler refused a class or function may be reported as pickled objects.
CORRUPT = r"^not a readable PyTorch checkpoint, truncated or corrupt\? \(.+\)$"


class _StateDictSubclass(collections.OrderedDict):  # a subclass is a GLOBAL of this module, not on the allow-list
    pass


class _TrainingArgs:
    def __init__(self):
        self.lr = 1e-5


def _message(path) -> str:
    """read_checkpoint's one-line error, without the path it starts with."""
    with pytest.raises(LipsyncInputError) as info:
        read_checkpoint(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    return text[len(f"{path}: "):]


def _saved(tmp_path, name, obj, legacy=False):
    path = tmp_path / name
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_random_bytes_are_corrupt_not_pickled_objects(tmp_path):
    rng = random.Random(14)
    sizes = [4096] * 40 + [1, 7, 100, 65536, 1_000_003]
    for i, size in enumerate(sizes):
        path = tmp_path / f"random{i}.pt"
        path.write_bytes(rng.randbytes(size))
        text = _message(path)
        assert re.search(CORRUPT, text) and "holds a pickled" not in text, (size, text)
    # random bodies behind each torch.save header pass the format check: torch's own reason must still win
    zip_head = _saved(tmp_path, "zip.pt", {"w": torch.zeros(2)}).read_bytes()[:4]
    legacy_head = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)
    for i in range(20):
        path = tmp_path / f"headed{i}.pt"
        path.write_bytes((zip_head, legacy_head)[i % 2] + rng.randbytes(4096))
        text = _message(path)
        assert re.search(CORRUPT, text) and "holds a pickled" not in text, (i, text)
    (tmp_path / "empty.pt").write_bytes(b"")
    assert re.search(CORRUPT, _message(tmp_path / "empty.pt"))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_checkpoints_are_corrupt(tmp_path, legacy):
    full = _saved(tmp_path, "full.pt", {"state_dict": {"w": torch.randn(64, 64)}, "global_step": 0},
                  legacy).read_bytes()
    for keep in (3, 64, len(full) // 2, len(full) - 10):
        path = tmp_path / f"cut{keep}.pt"
        path.write_bytes(full[:keep])
        text = _message(path)
        assert re.search(CORRUPT, text) and "holds a pickled" not in text, (keep, text)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("obj, name", [
    ({"state_dict": _StateDictSubclass(w=torch.zeros(2))}, rf"{__name__}\._StateDictSubclass"),
    ({"state_dict": {"w": torch.zeros(2)}, "args": _TrainingArgs()}, rf"{__name__}\._TrainingArgs"),
    ({"state_dict": {"w": torch.zeros(2)}, "hook": os.system}, r"(posix|nt)\.system"),  # a blocked module
], ids=["ordereddict-subclass", "custom-class", "blocked-function"])
def test_pickled_objects_in_a_real_checkpoint_are_named(tmp_path, legacy, obj, name):
    text = _message(_saved(tmp_path, "objects.pt", obj, legacy))
    assert re.fullmatch(rf"holds a pickled {name}, which torch\.load\(weights_only=True\) refuses to load because "
                        rf"unpickling it could run code; re-save only its tensors", text), text


def test_a_random_model_checkpoint_is_reported_corrupt_by_the_model_build(tmp_path):
    path = tmp_path / "latentsync_unet.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(LipsyncInputError, match=rf"^{re.escape(str(path))}: not a readable PyTorch checkpoint"):
        build_unet(small_cfg("latentsync_v1", path))
