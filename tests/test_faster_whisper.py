"""The faster_whisper audio encoder: whisper-tiny's encoder converted to CTranslate2 (offline, cached) computes the
PyTorch encoder's final, layer-normed output on any window length.

Tolerance: CTranslate2 (float32, its own GEMM/softmax/GELU kernels) vs PyTorch float32 on the same weights, measured
on this CPU at about 4e-7 relative L2 and 2e-6 max-abs (outputs of magnitude ~4); asserted at 1e-5 relative L2 and
1e-4 max-abs, which leaves room for other instruction sets while still catching any wrong tensor or missing LN.
"""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

import lipsync_lab.audio.faster_whisper as fw
from lipsync_lab.audio.faster_whisper import FasterWhisperEncoder, resolve_device
from lipsync_lab.audio.whisper import TINY, LogMel, WhisperFeatures
from lipsync_lab.media.demo import speech_like_audio
from test_checkpoints import TINY_DIMS, openai_encoder_ref, to_openai

pytest.importorskip("ctranslate2")

REL_L2, MAX_ABS = 1e-5, 1e-4


def tiny_pt(folder) -> tuple:
    """An OpenAI-layout tiny.pt (fp16, as OpenAI ships it) of realistic scale: a default-initialised encoder (seed 7)
    whose 1-d tensors (LayerNorm gains and shifts, biases) are perturbed so that none is trivial; activations stay
    below ~3. (The all-N(0,1) file of test_checkpoints drives them to ~8000, where float32 rounding alone separates
    implementations: 1.5e-4 relative L2 between CTranslate2 and PyTorch, 1.4e-5 between transformers and the
    OpenAI-names reference.)"""
    torch.manual_seed(7)
    source = WhisperEncoder(WhisperConfig(**TINY))
    with torch.no_grad():
        for t in source.state_dict().values():
            if t.ndim == 1:
                t.add_(0.1 * torch.randn(t.shape))
    sd = {k: t.half() for k, (_, t) in to_openai(source.state_dict()).items()}
    sd["decoder.token_embedding.weight"] = torch.randn(16, 384).half()  # the decoder is in the file, not used
    path = folder / "tiny.pt"
    torch.save({"dims": TINY_DIMS, "model_state_dict": sd}, path)
    return path, sd


def no_network(*args, **kwargs):
    raise AssertionError(f"the conversion tried to reach the network: {args}")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The seed-0 encoder and one from an OpenAI-layout tiny.pt, each converted once into a private cache, with
    every socket connection refused while they convert."""
    cache = tmp_path_factory.mktemp("ct2")
    checkpoint, sd = tiny_pt(tmp_path_factory.mktemp("whisper"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        seed0 = FasterWhisperEncoder.build(seed=0, threads=2, cache_dir=cache)
        from_file = FasterWhisperEncoder.build(str(checkpoint), threads=2, cache_dir=cache)
    yield dict(cache=cache, seed0=seed0, from_file=from_file, checkpoint=checkpoint, sd=sd)
    shutil.rmtree(cache)  # 150 MB per converted model: not left in pytest's kept temporary folders


@pytest.fixture(scope="module")
def mel():
    return LogMel()(torch.from_numpy(speech_like_audio(5.0, seed=1).astype(np.float32)))  # (80, 500)


def close(got: torch.Tensor, ref: torch.Tensor):
    assert got.shape == ref.shape and got.dtype == torch.float32
    rel = ((got - ref).norm() / ref.norm()).item()
    err = (got - ref).abs().max().item()
    assert rel < REL_L2 and err < MAX_ABS, (rel, err)


@pytest.mark.parametrize("frames", [500, 37])
def test_final_layer_is_the_pytorch_encoders_output_after_its_layer_norm(built, mel, frames):
    torch_model = WhisperFeatures.build(seed=0)
    with torch.no_grad():
        ref = torch_model.encoder.layer_norm(torch_model.stack(mel[None, :, :frames])[0, : frames // 2, -1])
    got = built["seed0"].final_layer(mel[:, :frames])
    assert got.shape == (frames // 2, 384)  # unpadded: the cost follows the window
    close(got, ref)


def test_checkpoint_is_honoured(built, mel):
    """tiny.pt's encoder (OpenAI's own names, computed independently of transformers) + ln_post."""
    w = {k: v.float() for k, v in built["sd"].items()}
    with torch.no_grad():
        last = openai_encoder_ref(built["sd"], mel[None])[-1][0]
        ref = F.layer_norm(last, (384,), w["encoder.ln_post.weight"], w["encoder.ln_post.bias"])
    got = built["from_file"].final_layer(mel)
    close(got, ref)
    assert built["from_file"].folder != built["seed0"].folder
    assert (got - built["seed0"].final_layer(mel)).abs().max() > 0.1


def test_same_weights_reuse_the_cache(built, monkeypatch):
    folder = built["seed0"].folder
    stamp = folder.stat().st_mtime_ns, (folder / "model.bin").stat().st_mtime_ns

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(fw, "_transformers_model", no_conversion)
    again = FasterWhisperEncoder.build(seed=0, threads=2, cache_dir=built["cache"])
    assert again.folder == folder
    assert (folder.stat().st_mtime_ns, (folder / "model.bin").stat().st_mtime_ns) == stamp
    # one folder per set of weights, no temporary folder left behind
    assert sorted(p.name for p in built["cache"].iterdir()) == sorted([folder.name, built["from_file"].folder.name])
    with pytest.raises(AssertionError, match="converted again"):
        FasterWhisperEncoder.build(seed=1, cache_dir=built["cache"])


def test_stack_repeats_the_final_layer_five_times(built, mel):
    enc = built["seed0"]
    out = enc.stack(mel[:, :101])
    assert out.shape == (50, 5, 384)
    final = enc.final_layer(mel[:, :101])
    for layer in range(5):
        assert torch.equal(out[:, layer], final)


def test_samples_to_features_and_window_limit(built):
    enc = built["seed0"]
    samples = speech_like_audio(1.0, seed=2).astype(np.float32)
    out = enc(samples)
    assert out.shape == (50, 5, 384)
    assert torch.equal(out, enc.stack(LogMel()(torch.from_numpy(samples)))[:50])
    with pytest.raises(ValueError, match="at most 3000"):
        enc.final_layer(torch.zeros(80, 3002))
    assert enc.final_layer(torch.zeros(80, 1)).shape == (0, 384)


def test_encode_as_the_streaming_front_ends_call_it(built, mel):
    """encode(): unpadded by default; pad_to=3000 is upstream's padded segment, as WhisperFeatures.encode pads it."""
    enc, window = built["seed0"], mel[:, :120]
    assert torch.equal(enc.encode(window), enc.stack(window))
    torch_model = WhisperFeatures.build(seed=0)
    with torch.no_grad():
        padded = F.pad(window, (0, 3000 - 120))
        ref = torch_model.encoder.layer_norm(torch_model.stack(padded[None])[0, :60, -1])
    got = enc.encode(window, pad_to=3000)
    assert got.shape == (60, 5, 384)
    close(got[:, 4], ref)
    assert (got[:, 4] - enc.final_layer(window)).abs().max() > 1e-3  # attending over the padding changes them
    with pytest.raises(ValueError, match="position 0"):
        enc.encode(window, position_offset=1500)


def test_device_choice(monkeypatch):
    import ctranslate2

    assert resolve_device("cpu") == ("cpu", 0) and resolve_device(torch.device("cuda", 1)) == ("cuda", 1)
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    assert resolve_device("auto") == ("cpu", 0)
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    assert resolve_device("auto") == ("cuda", 0)
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(ValueError):
            resolve_device(bad)
