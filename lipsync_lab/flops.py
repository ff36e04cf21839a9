"""Achieved compute: FLOPs of each model stage of a batch, and the TFLOP/s a run reached (gpt-fast's habit).

FLOPs are counted once per configuration by torch's `FlopCounterMode` on the meta device — the models built from
the run's config without weights (FLOPs do not depend on them), called on the shapes one full batch of
`batch_frames` frames gives them — so counting costs no memory and no compute, on any machine, and never touches
the run's own (perhaps compiled) models. Counted: matmuls, convolutions and attention (2 FLOP per multiply-add);
not counted: norms, activations, the scheduler's and CFG's element-wise arithmetic, the log-mel STFT — so achieved
TFLOP/s are those of the tensor work, the figure a peak is quoted for. `scripts/count_flops.py` counts the UNet
with the same function (`unet_flops`), so the script and the runs agree (tested).

What one batch runs is said by the stages themselves, as a FLOP plan this module only counts:
  diffusion      `LipsyncDiffusion.plan` (diffusion/denoise.py): per denoising step the UNet callable the `cache`
                 option picks ("full", or a cheaper kind such as a shallow DeepCache step) on the branches the
                 `guidance` option evaluates (2 clips under CFG); a VAE encode for mask_latents and image_latents,
                 a decode; `diffusion=passthrough` runs no model and says so (an empty plan)
  audio          the front end's `flop_plan` (audio/features.py): the encoder pass per batch — upstream's 30-s
                 segment for `audio=whisper`, the padded window for `audio=whisper_window`; none for
                 `audio=faster_whisper`, whose CTranslate2 encoder runs outside torch where the counter cannot see it
  denoise_step   the denoise FLOPs over the steps: the average step, as the printed "Average denoising per step"
  diffusion      its sub-stages together
A stage without a plan is an error here, never a silent zero. Eager runs call the models on a short last batch's
frames only: the medians are over (mostly) full batches.

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


def _meta_whisper():
    from lipsync_lab.audio.whisper import WhisperFeatures

    with torch.device("meta"):
        return WhisperFeatures.build(checkpoint=None, seed=0, device="meta")


class _EncoderKind:
    """Stands in for an audio encoder when only its kind matters (whether torch runs it), so counting never builds
    (or converts) one."""

    def __init__(self, counted_by_torch: bool):
        self.counted_by_torch = counted_by_torch


def stage_plans(cfg: DictConfig, pipeline=None) -> dict[str, list[tuple]]:
    """What the run's stages say one full batch runs (their FLOP plans), per stage key. From the pipeline's stages
    where given, else from the stage classes the config chooses, with its settings."""
    from hydra.utils import get_class, get_object

    from lipsync_lab.audio.features import lookahead_frames
    from lipsync_lab.build import make

    frames, lookahead = int(cfg.batch_frames), lookahead_frames(cfg.audio.lookahead_s)
    if pipeline is not None:
        diffusion, front_end = pipeline.diffusion, pipeline.audio.front_end
        plans = dict(diffusion.flop_plan())
    else:
        stage = get_class(cfg.diffusion._target_)
        plans = dict(stage.plan(int(cfg.steps), frames, make(cfg.guidance, scale=cfg.guidance_scale), make(cfg.cache)))
        encoder = get_object(cfg.audio.encoder._target_)
        encoder_class = getattr(encoder, "__self__", encoder)  # a classmethod target (`….build`): its class
        front_end = make(cfg.audio.front_end, encoder=_EncoderKind(encoder_class.counted_by_torch))
    for key, plan in front_end.flop_plan(frames, lookahead).items():
        plans[key] = plans.get(key, []) + plan
    return plans


def count_plans(cfg: DictConfig, plans: dict[str, list[tuple]], pipeline=None) -> dict[str, float]:
    """FLOPs per stage key of a batch: every call of every plan counted on the meta device (each distinct call
    once). Calls: ("unet", kind, clips, frames), ("vae", "encode" | "decode", frames), ("whisper", "encode",
    mel frames)."""
    from lipsync_lab.build import make

    models: dict[str, object] = {}
    cache = make(cfg.cache)  # a fresh one: the run's holds device tensors (its cached features)
    cache.begin()
    counted: dict[tuple, int] = {}

    def count(call: tuple) -> int:
        if call in counted:
            return counted[call]
        model = call[0]
        if model == "unet":
            _, kind, clips, n = call
            if "unet" not in models:
                models["unet"], models["latent"] = meta_unet(cfg), _meta_vae(cfg, pipeline)[1]
            latent = models["latent"]
            x = torch.zeros(clips, n, 13, latent, latent, device="meta")
            context = torch.zeros(clips, n, 50, 384, device="meta")
            fn = cache.call(models["unet"], kind)
            flops = flop_count(lambda: fn(x, 999, context, None))
        elif model == "vae":
            _, method, n = call
            if "vae" not in models:
                models["vae"], models["latent"] = _meta_vae(cfg, pipeline)
            vae, latent, res = models["vae"], models["latent"], int(cfg.model.resolution)
            if method == "encode":
                pixels = torch.zeros(n, 3, res, res, device="meta")
                flops = flop_count(lambda: vae.encode(pixels))
            else:
                latents = torch.zeros(n, vae.config.latent_channels, latent, latent, device="meta")
                flops = flop_count(lambda: vae.decode(latents))
        elif model == "whisper":
            from lipsync_lab.audio.whisper import N_MELS

            encoder = models.setdefault("whisper", _meta_whisper())
            mel = torch.zeros(1, N_MELS, call[2], device="meta")
            flops = flop_count(lambda: encoder.stack(mel))
        else:
            raise ValueError(f"a FLOP plan names a call flops.py cannot count: {call}")
        counted[call] = flops
        return flops

    out = {key: sum(count(call) for call in plan) for key, plan in plans.items()}
    denoise = plans.get("denoise")
    if denoise:
        out["denoise_step"] = out["denoise"] / len(denoise)
    parts = [k for k in ("mask_latents", "image_latents", "denoise", "decode") if k in out]
    if parts:
        out["diffusion"] = sum(out[k] for k in parts)
    return {k: float(v) for k, v in out.items() if plans.get(k, True) != []}


def stage_flops(cfg: DictConfig, pipeline=None) -> dict[str, float]:
    """FLOPs per full batch of `batch_frames` frames, per stage key (see the module's docstring). The pipeline,
    where given, supplies its stages' plans and its VAE's exact architecture; everything else follows from the
    config."""
    with torch.random.fork_rng(devices=[]), _quiet_builders():  # the builders seed torch's global generator
        cfg = _without_weights(cfg)
        return count_plans(cfg, stage_plans(cfg, pipeline), pipeline)


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
