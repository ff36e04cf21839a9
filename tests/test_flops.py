"""Achieved compute: the FLOPs counted per stage are those of what a batch runs (the UNet as scripts/count_flops.py
counts it, CFG and steps, the VAE, the audio front end's window), and TFLOP/s / peak fractions follow from them."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import ROOT
from lipsync_lab.audio.features import StreamingAudioFeatures, lookahead_frames
from lipsync_lab.build import build_audio_front_end
from lipsync_lab.config import compose
from lipsync_lab.flops import add_tflops, flop_count, peak_tflops, stage_flops, stage_plans
from lipsync_lab.media.source import SAMPLES_PER_FRAME
from lipsync_lab.results import format_summary


def count_flops_script():
    spec = importlib.util.spec_from_file_location("count_flops", ROOT / "scripts" / "count_flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset, frames", [("tiny", 4), ("latentsync_v1", 8), ("latentsync_v15", 8)])
def test_unet_flops_match_the_count_flops_script(preset, frames):
    script = count_flops_script()
    per_frame, scores = script.count(preset, 32, frames, "latentsync")
    plain = stage_flops(compose([f"model={preset}", f"batch_frames={frames}", "guidance_scale=1.0", "steps=1"]))
    assert plain["denoise_step"] == pytest.approx(per_frame * frames, rel=1e-12)
    # ... which, less the attention-score products, is the reference's figure (docs/reference, §4.1)
    reference = {p: r for p, _, r in script.CASES}.get(preset)
    if reference is not None:
        assert (per_frame - scores) / 1e9 == pytest.approx(reference, rel=2e-3)
    # CFG doubles every UNet call (two clips: null audio | audio), steps multiply them; the batch's whole
    # diffusion stage is two encodes, the steps and a decode
    cfg = compose([f"model={preset}", f"batch_frames={frames}", "guidance_scale=1.5", "steps=3"])
    flops = stage_flops(cfg)
    assert flops["denoise_step"] == pytest.approx(2 * plain["denoise_step"], rel=1e-12)
    assert flops["denoise"] == 3 * flops["denoise_step"]
    assert flops["diffusion"] == flops["mask_latents"] + flops["image_latents"] + flops["denoise"] + flops["decode"]


def test_vae_flops_per_frame_are_the_reference_figures():
    """docs/reference/anchors.md §A6: SD VAE (ft-mse) at 256 px, 273 GF encode / 622 GF decode per frame."""
    flops = stage_flops(compose(["model=latentsync_v1", "vae=kl", "batch_frames=2"]))
    assert flops["mask_latents"] == flops["image_latents"]
    assert flops["mask_latents"] / 2 / 1e9 == pytest.approx(273, rel=5e-3)
    assert flops["decode"] / 2 / 1e9 == pytest.approx(622, rel=5e-3)


@pytest.mark.parametrize("audio, frames", [("whisper", 8), ("whisper_window", 8), ("whisper_window", 64)])
def test_audio_flops_are_what_a_steady_batch_runs(audio, frames):
    """Count a real call of the front end for the stream's second batch (its window no longer clipped at the
    stream's start) and compare: the 30-s segment for `whisper`, the 2-s window — or the batch's span when longer —
    for `whisper_window`. (The log-mel's filterbank matmul, a fraction of a percent, is in the real count only.)"""
    cfg = compose([f"audio={audio}", f"batch_frames={frames}"])
    stream = StreamingAudioFeatures(build_audio_front_end(cfg, torch.device("cpu"), torch.float32))
    ready = 2 * frames + lookahead_frames(cfg.audio.lookahead_s)  # batch 1 and its look-ahead
    stream.push(np.random.default_rng(0).standard_normal(ready * SAMPLES_PER_FRAME).astype(np.float32) * 0.1)
    counted = flop_count(lambda: stream.features(list(range(frames, 2 * frames))))  # real tensors, real window
    planned = stage_flops(cfg)["audio"]
    assert counted == pytest.approx(planned, rel=5e-3)
    if audio == "whisper":
        assert planned / 1e9 == pytest.approx(36.9, rel=2e-3)  # whisper-tiny, 30 s (anchors §A6)


def test_stages_without_a_torch_model_have_no_flops():
    assert "audio" not in stage_flops(compose(["audio=faster_whisper"]))  # CTranslate2: not torch's to count
    assert set(stage_flops(compose(["diffusion=passthrough"]))) == {"audio"}


def test_every_diffusion_and_audio_option_reports_its_plan():
    """A stage says what it runs (its FLOP plan); one without a plan fails here instead of counting zero."""
    from lipsync_lab.paths import CONF_DIR

    for group in ("diffusion", "audio", "guidance", "cache"):
        for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
            plans = stage_plans(compose([f"{group}={option}"]))
            assert "audio" in plans, (group, option)
            if (group, option) != ("diffusion", "passthrough"):
                assert len(plans["denoise"]) == 3 and plans["mask_latents"] == [("vae", "encode", 8)], (group, option)


def test_a_plan_names_what_it_counts(monkeypatch):
    """The count follows the plan: a stage whose plan doubles its UNet calls doubles its denoise FLOPs, and a call
    the counter does not know is an error, not zero."""
    from lipsync_lab import flops

    cfg = compose(["batch_frames=4", "steps=2"])
    base = stage_flops(cfg)
    plans = stage_plans(cfg)
    doubled = dict(plans, denoise=plans["denoise"] * 2)
    assert flops.count_plans(cfg, doubled)["denoise"] == pytest.approx(2 * base["denoise"])
    with pytest.raises(ValueError, match="cannot count"):
        flops.count_plans(cfg, dict(plans, decode=[("gan", "decode", 4)]))


def test_tflops_and_the_peak_fraction(monkeypatch):
    flops = {"denoise": 2e12, "decode": 1e12}
    stages = {"denoise": dict(median=0.5), "decode": dict(median=0.0), "face": dict(median=0.1)}
    summary = add_tflops(dict(stages=stages), flops, "cpu", torch.float32)
    assert stages["denoise"]["tflops"] == pytest.approx(4.0) and stages["denoise"]["peak_fraction"] is None
    assert stages["decode"]["tflops"] is None  # never ran: no rate
    assert "tflops" not in stages["face"] and summary["flops"] == flops and summary["peak_tflops"] is None
    # on CUDA the device's name picks the peak; an unknown device gets none (never guessed)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, dtype, peak in [("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4), ("NVIDIA H100 PCIe", torch.float16,
                              756.5), ("NVIDIA H200", torch.bfloat16, 989.4), ("NVIDIA A100-SXM4-80GB",
                              torch.float16, 312.0), ("NVIDIA L4", torch.bfloat16, 121.0),
                              ("NVIDIA GeForce RTX 4090", torch.float16, 165.2), ("NVIDIA Foo 9000", torch.bfloat16,
                              None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert peak_tflops("cuda", dtype)[0] == peak, name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    summary = add_tflops(dict(stages={"denoise": dict(median=0.01)}), {"denoise": 1e12}, "cuda", torch.bfloat16)
    assert summary["stages"]["denoise"]["peak_fraction"] == pytest.approx(100 / 989.4)
    assert summary["peak_basis"] == "NVIDIA H100 80GB HBM3 bf16 dense"


def test_the_printed_summary_shows_tflops():
    stages = {k: dict(label=k, parent=None, median=0.5, p10=0.4, p90=0.6, n=3) for k in ("face", "diffusion")}
    summary = dict(stages=stages, includes_warmup=False, steady_batches=3, steady_frames=24, batch_total_median=1.0,
                   batch_total_p10=0.9, batch_total_p90=1.1, fps=8.0, rtf_median=1.0)
    assert "TFLOP/s" not in format_summary(summary)
    add_tflops(summary, {"diffusion": 1e12}, "cpu", torch.float32)
    text = format_summary(summary)
    assert "TFLOP/s" in text and "2.000" in text.splitlines()[3]
