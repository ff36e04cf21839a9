"""Achieved compute: FLOPs of each model stage of a batch, and the TFLOP/s a run reached (gpt-fast's habit).

FLOPs are counted once per configuration by torch's `FlopCounterMode` on the meta device — the models built from
the run's config without weights (FLOPs do not depend on them), called on the shapes one full batch of
`batch_frames` frames gives them — so counting costs no memory and no compute, on any machine, and never touches
the run's own (perhaps compiled) models. Counted: matmuls, convolutions and attention (2 FLOP per multiply-add);
not counted: norms, activations, the scheduler's and CFG's element-wise arithmetic, the log-mel STFT — so achieved
TFLOP/s are those of the tensor work, the figure a peak is quoted for. `scripts/count_flops.py` counts the UNet
with the same function (`unet_flops`), so the script and the runs agree (tested).

What one batch runs (lipsync_lab/diffusion/denoise.py, audio/features.py):
  denoise        `steps` UNet calls on (copies, frames, 13, h, w), copies = 2 under CFG (guidance_scale > 1)
  denoise_step   one of those calls (its median is per step)
  mask_latents   a VAE encode of the masked faces;  image_latents: a VAE encode of the faces
  decode         a VAE decode of the latents
  diffusion      the four above together (its other sub-stages do no tensor work worth counting)
  audio          the whisper encoder on the window the `audio` front end encodes per batch: upstream's 30-s
                 segment for `audio=whisper` (3000 mel frames, whatever the batch), `window_s` (or the batch's span
                 if longer) for `audio=whisper_window`; left out for `audio=faster_whisper`, whose CTranslate2
                 encoder runs outside torch where the counter cannot see it. A batch that crosses a 30-s boundary
                 encodes two segments: the count is the usual batch's.
Eager runs call the models on a short last batch's frames only: the medians are over (mostly) full batches.

Achieved TFLOP/s = stage FLOPs / the stage's steady-state median seconds (`add_tflops`), and on CUDA the fraction
of the device's peak dense tensor throughput for the run's dtype (`PEAK_TFLOPS`); None where the device is not
in the table (never guessed) and on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

log = logging.getLogger(__name__)

# Peak dense (no structured sparsity) TFLOP/s per device name pattern, per dtype of the tensor work:
#   fp16 / bf16: tensor cores with FP32 accumulation (what PyTorch uses);
#   tf32: tensor cores on fp32 tensors (cuDNN convolutions by default, matmuls with float32_matmul_precision
#         'high'); fp32: CUDA cores (matmuls under the default 'highest' precision).
# Sources: NVIDIA's data sheets, whose tensor-core figures are quoted "with sparsity" — halved here:
#   H100 SXM / PCIe / NVL: nvidia.com/en-us/data-center/h100 (BF16 1,979 / 1,513 / 1,671 sparse; TF32 989 / 756 /
#     835 sparse; FP32 67 / 51 / 60) — also in docs/reference/anchors.md §A6;
#   H200 SXM / NVL: nvidia.com/en-us/data-center/h200 (same compute as H100 SXM / NVL);
#   A100 (SXM and PCIe, 40 and 80 GB): A100 data sheet (BF16 312 dense, TF32 156, FP32 19.5);
#   L4: L4 data sheet (FP16/BF16 242 sparse, TF32 120 sparse, FP32 30.3);
#   L40S: L40S data sheet (BF16 733 sparse, TF32 366 sparse, FP32 91.6);
#   RTX 4090: Ada Lovelace architecture whitepaper, appendix table (FP16/BF16 tensor with FP32 accumulate 165.2
#     dense; TF32 82.6 dense; FP32 82.6).
# Patterns are tried in order (the NVL / PCIe variants before the plain name, which is the SXM part).
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    (r"H100.*NVL", dict(bf16=835.5, fp16=835.5, tf32=417.5, fp32=60.0)),
    (r"H100.*PCIe", dict(bf16=756.5, fp16=756.5, tf32=378.0, fp32=51.2)),
    (r"H100", dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9)),
    (r"H200.*NVL", dict(bf16=835.5, fp16=835.5, tf32=417.5, fp32=60.0)),
    (r"H200", dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9)),
    (r"A100", dict(bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5)),
    (r"L40S", dict(bf16=362.05, fp16=362.05, tf32=183.0, fp32=91.6)),
    (r"\bL4\b", dict(bf16=121.0, fp16=121.0, tf32=60.0, fp32=30.3)),
    (r"RTX 4090", dict(bf16=165.2, fp16=165.2, tf32=82.6, fp32=82.6)),
]
DTYPE_KEYS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}

MODEL_STAGES = ("audio", "mask_latents", "image_latents", "denoise", "denoise_step", "decode", "diffusion")


# -- counting -----------------------------------------------------------------------------------------------------
def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one that real CPU tensors dispatch to (the meta
# device takes a counted path): without this, counting a real CPU call would leave every attention score out
_EXTRA_FORMULAS = {op: _attention_flops for op in
                   [getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)] if op is not None}


def flop_count(fn: Callable[[], Any]) -> int:
    """FLOPs torch's FlopCounterMode sees while `fn()` runs (no autograd), on any device."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    with counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def _without_weights(cfg: DictConfig) -> DictConfig:
    """The config with every weight source off: the architecture is the preset's either way (a UNet checkpoint is
    loaded strictly into it), and weights do not change FLOPs."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(cfg):
        cfg.model.checkpoint = None
        cfg.vae.path = None
        cfg.audio.checkpoint = None
    return cfg


def meta_unet(cfg: DictConfig):
    """The run's UNet (model + norm presets) on the meta device: shapes only."""
    from lipsync_lab.build import build_unet

    with torch.device("meta"):
        return build_unet(_without_weights(cfg))


def unet_flops(unet, copies: int, frames: int, latent: int) -> int:
    """One pipeline UNet call: `copies` clips of `frames` frames of 13 × latent² inputs, (50, 384) audio each."""
    device = next(unet.parameters()).device
    x = torch.zeros(copies, frames, 13, latent, latent, device=device)
    context = torch.zeros(copies, frames, 50, 384, device=device)
    return flop_count(lambda: unet(x, 999, context))


def _meta_vae(cfg: DictConfig, pipeline=None) -> tuple[torch.nn.Module, int]:
    """(the diffusers VAE on meta, latent size). From the pipeline's own VAE's config where given (exact, also for
    a `vae.path` folder whose architecture differs from the preset's), else the preset's architecture."""
    if pipeline is not None:
        real = pipeline.diffusion.vae.model
        with torch.device("meta"):
            return type(real).from_config(real.config), pipeline.diffusion.latent_size
    from lipsync_lab.build import build_vae

    with torch.device("meta"):
        vae = build_vae(_without_weights(cfg))
    return vae.model, cfg.model.resolution // vae.downscale


def vae_flops(cfg: DictConfig, pipeline=None) -> tuple[int, int, int]:
    """(encode FLOPs, decode FLOPs, latent size) of one full batch at the model's resolution."""
    model, latent = _meta_vae(cfg, pipeline)
    frames, res = int(cfg.batch_frames), int(cfg.model.resolution)
    pixels = torch.zeros(frames, 3, res, res, device="meta")
    latents = torch.zeros(frames, model.config.latent_channels, latent, latent, device="meta")
    return flop_count(lambda: model.encode(pixels)), flop_count(lambda: model.decode(latents)), latent


def audio_mel_frames(cfg: DictConfig) -> int | None:
    """Mel frames the `audio` option's whisper encoder runs on per (steady-state) batch; None when its encoder is
    not torch's (CTranslate2) or the front end is one this module does not know."""
    from lipsync_lab.audio.features import LEFT, STEPS_PER_FRAME, lookahead_frames
    from lipsync_lab.audio.whisper import WINDOW_FRAMES

    encoder, front_end = cfg.audio.encoder.get("_target_", ""), cfg.audio.front_end.get("_target_", "")
    if not encoder.startswith("lipsync_lab.audio.whisper.WhisperFeatures"):
        return None
    if front_end.endswith("SegmentAligned"):
        return WINDOW_FRAMES  # the current 30-s segment, zero-padded to 30 s, every batch
    if front_end.endswith("SlidingWindow"):
        # from the batch's first frame's first step to the audio received (its frames + the look-ahead), widened
        # to window_s when padded
        span = STEPS_PER_FRAME * (int(cfg.batch_frames) + lookahead_frames(cfg.audio.lookahead_s)) + LEFT
        window = int(round(float(cfg.audio.front_end.get("window_s", 2.0)) * 50))
        steps = max(span, window) if cfg.audio.front_end.get("pad", True) else span
        return 2 * steps
    return None


def audio_flops(cfg: DictConfig) -> int | None:
    from lipsync_lab.audio.whisper import N_MELS, WhisperFeatures

    mel_frames = audio_mel_frames(cfg)
    if mel_frames is None:
        return None
    with torch.device("meta"):
        encoder = WhisperFeatures.build(checkpoint=None, seed=0, device="meta")
    mel = torch.zeros(1, N_MELS, mel_frames, device="meta")
    return flop_count(lambda: encoder.stack(mel))


def stage_flops(cfg: DictConfig, pipeline=None) -> dict[str, float]:
    """FLOPs per full batch of `batch_frames` frames, per stage key (see the module's docstring). The pipeline,
    where given, supplies its VAE's exact architecture; everything else follows from the config."""
    with torch.random.fork_rng(devices=[]), _quiet_builders():  # the builders seed torch's global generator
        return _stage_flops(cfg, pipeline)


@contextlib.contextmanager
def _quiet_builders():
    """The model builders log what they build; a shape-only copy after the stream is not news in the run's log."""
    loggers = [logging.getLogger(n) for n in ("lipsync_lab.diffusion.unet", "lipsync_lab.diffusion.vae")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _stage_flops(cfg: DictConfig, pipeline=None) -> dict[str, float]:
    out = {}
    if not cfg.model.get("passthrough"):  # model=passthrough: no diffusion models, nothing to count there
        frames, steps = int(cfg.batch_frames), int(cfg.steps)
        copies = 2 if float(cfg.guidance_scale) > 1.0 else 1  # CFG: [null audio | audio] in one call
        encode, decode, latent = vae_flops(cfg, pipeline)
        step = unet_flops(meta_unet(cfg), copies, frames, latent)
        out = dict(mask_latents=encode, image_latents=encode, denoise=steps * step, denoise_step=step, decode=decode)
        out["diffusion"] = encode + encode + steps * step + decode
    audio = audio_flops(cfg)
    if audio is not None:
        out["audio"] = audio
    return {k: float(v) for k, v in out.items()}


# -- achieved -------------------------------------------------------------------------------------------------------
def peak_tflops(device: torch.device | str | None, dtype: torch.dtype) -> tuple[float | None, str | None]:
    """(peak dense TFLOP/s, what it is) of a CUDA device for `dtype`'s tensor work; (None, None) off CUDA or for a
    device not in PEAK_TFLOPS. fp32 counts as TF32 when cuDNN or matmuls may use it (the default for cuDNN's
    convolutions, which dominate these models): the higher peak, so the fraction is never overstated."""
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return None, None
    name = torch.cuda.get_device_name(device)
    key = DTYPE_KEYS.get(dtype)
    if key == "fp32" and (torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32):
        key = "tf32"
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, name) and key in peaks:
            return peaks[key], f"{name} {key} dense"
    return None, None


def add_tflops(summary: dict, flops: dict[str, float], device=None, dtype: torch.dtype = torch.float32) -> dict:
    """Put `flops` in the summary (summary["flops"]: per full batch) and, per stage with FLOPs, `tflops`
    (achieved TFLOP/s = FLOPs / median seconds; None when the median is 0, e.g. a stage that never ran) and
    `peak_fraction` (of `peak_tflops`; None off CUDA or on an unknown device). Returns the summary."""
    peak, basis = peak_tflops(device, dtype)
    summary["flops"] = dict(flops)
    summary["peak_tflops"], summary["peak_basis"] = peak, basis
    for key, stage in summary.get("stages", {}).items():
        if key not in flops:
            continue
        median = stage.get("median") or 0.0
        tflops = flops[key] / median / 1e12 if median > 0 else None
        stage["tflops"] = tflops
        stage["peak_fraction"] = tflops / peak if tflops is not None and peak else None
    return summary


def add_achieved_compute(summary: dict, cfg: DictConfig, pipeline, device, dtype: torch.dtype) -> dict:
    """What a run calls after summarising: `stage_flops` + `add_tflops`. A counting failure (an architecture the
    meta device cannot trace, say) is logged and leaves summary["flops"] None: a report must not fail the run."""
    try:
        flops = stage_flops(cfg, pipeline)
    except Exception as e:  # noqa: BLE001 — see the docstring
        log.warning("FLOPs not counted (%s: %s); no achieved TFLOP/s in this run's summary", type(e).__name__, e)
        summary["flops"] = None
        return summary
    return add_tflops(summary, flops, device, dtype)
