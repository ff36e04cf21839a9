"""The one place that turns the config groups into objects (design §1).

Every variant axis is a config group whose option either builds its object through `_target_` (source, model's
UNet, norm, vae, scheduler, face detector, align, audio encoder, restore, sink) or holds plain values (precision,
device, compile, optimize). Adding a variant = one implementation file + one YAML; nothing here changes unless a
new kind of stage appears.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lipsync_lab.audio.features import StreamingAudioFeatures
from lipsync_lab.diffusion import unet as unet_module
from lipsync_lab.diffusion.unet import LatentSyncUNet
from lipsync_lab.diffusion.vae import LatentVAE
from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.face.align import FaceAligner
from lipsync_lab.face.cache import LandmarkCache, cache_path
from lipsync_lab.face.mask import mouth_mask
from lipsync_lab.optimize import optimize
from lipsync_lab.paths import CACHE_DIR
from lipsync_lab.pipeline import LipsyncPipeline

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LANDMARK_CACHE = CACHE_DIR / "landmarks"


# pip's name for an import name where the two differ, among the packages this project's options import
PIP_NAMES = {"cv2": "opencv-python-headless", "dlib": "dlib-bin", "skimage": "scikit-image", "yaml": "pyyaml"}


def _import_problem(error: ImportError) -> str:
    """One line for an ImportError met while building an option: which package is missing and how to install it.

    Hydra's `_locate` wraps the import's error in an ImportError whose text holds the inner error's repr and ends at
    a colon: such wrappers are skipped. An ImportError that explains itself (faster_whisper's "needs ctranslate2:
    pip install ...") is kept as it is."""
    while isinstance(error.__cause__, ImportError) and repr(error.__cause__) in str(error):
        error = error.__cause__
    if isinstance(error, ModuleNotFoundError) and error.name:
        top = error.name.partition(".")[0]
        if importlib.util.find_spec(top) is None:  # (a missing submodule of an installed package: its own text)
            pip = PIP_NAMES.get(top, top)
            module = f" (module {top})" if pip != top else ""
            return f"needs the Python package '{pip}'{module}, which is not installed here (pip install {pip})"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def make(node: DictConfig, **kwargs):
    """`instantiate(node, **kwargs)`, with bad input surfacing as our one-line error instead of Hydra's wrapper."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, LipsyncInputError):
            raise cause from None
        if isinstance(cause, ImportError):  # an option whose optional package is not installed: say which
            raise LipsyncInputError(node.get("_target_", "config"), _import_problem(cause)) from None
        raise


def build_source(cfg: DictConfig):
    missing = [k for k in cfg.source if OmegaConf.is_missing(cfg.source, k)]
    if missing:
        raise LipsyncInputError(f"source.{missing[0]}", f"not set: pass source.{missing[0]}=PATH")
    # `pace` is the stream's, not the source's: the executor paces whatever source it reads (media/pace.py)
    node = {k: v for k, v in OmegaConf.to_container(cfg.source, resolve=True).items() if k != "pace"}
    return make(OmegaConf.create(node), max_frames=cfg.max_frames)


def build_landmarks(cfg: DictConfig, source):
    """The `face` option's detector, behind the landmark cache when `face.cache` is on."""
    detector = make(cfg.face.detector)
    if not cfg.face.cache:
        return detector
    settings = OmegaConf.to_container(cfg.face.detector, resolve=True)
    folder = cfg.face.get("cache_dir") or LANDMARK_CACHE
    return LandmarkCache(detector, cache_path(folder, source.content_key(), settings))


def build_unet(cfg: DictConfig) -> LatentSyncUNet:
    """`model` (architecture, checkpoint) + `norm` (GroupNorm convention), on the CPU in fp32."""
    unet = unet_module.build_unet(cfg.model, make(cfg.norm), cfg.seed)
    if unet.max_frames is not None and cfg.batch_frames > unet.max_frames:  # say so now, not after a batch's work
        raise LipsyncInputError("batch_frames", f"{cfg.batch_frames} frames per UNet call, but model={cfg.model.name}"
                                                f" takes at most {unet.max_frames} (its temporal position table)")
    return unet


def build_vae(cfg: DictConfig) -> LatentVAE:
    """`vae` at the model preset's size (or from `vae.path`), on the CPU in fp32."""
    return make(cfg.vae, size=cfg.model.vae_size, seed=cfg.seed)


def build_scheduler(cfg: DictConfig):
    return make(cfg.scheduler.scheduler)


def build_diffusion(cfg: DictConfig, device: torch.device = torch.device("cpu"),
                    dtype: torch.dtype = torch.float32):
    """The `diffusion` option's stage. A stage that uses models (`uses_models`: LatentSync's) gets the UNet and VAE
    (optimised per `optimize` and `compile`), the scheduler, the `guidance` and `cache` options, the mouth mask and
    the run's settings; one that does not (passthrough) gets the mask."""
    stage = make(cfg.diffusion)  # a partial: the option's class with its own settings
    mask = mouth_mask(cfg.model.resolution, cfg.face.mask_path)
    if not stage.func.uses_models:
        return stage(mask=mask, device=device)
    unet = build_unet(cfg).to(device, dtype)
    vae = build_vae(cfg).to(device, dtype)
    report = optimize(unet, vae, cfg.optimize, cfg.compile)
    return stage(unet=unet, vae=vae, scheduler=build_scheduler(cfg), mask=mask, steps=cfg.steps,
                 frames=cfg.batch_frames, guidance=make(cfg.guidance, scale=cfg.guidance_scale), cache=make(cfg.cache),
                 static_shapes=cfg.compile.static_shapes, device=device, dtype=dtype, seed=cfg.seed,
                 compile_report=report)


def build_audio_front_end(cfg: DictConfig, device: torch.device, dtype: torch.dtype):
    """The `audio` option: its encoder, and the front end that decides which window of the stream it encodes."""
    encoder = make(cfg.audio.encoder, seed=cfg.seed, device=device, dtype=dtype)
    if cfg.model.checkpoint and not encoder.latentsync_layout and not cfg.audio.get("allow_official_unet"):
        raise LipsyncInputError("audio", f"the {type(encoder).__name__} features are not the 5-layer stack "
                                         f"LatentSync's UNet was trained on, and model.checkpoint is an official UNet:"
                                         f" pass +audio.allow_official_unet=true to combine them anyway")
    return make(cfg.audio.front_end, encoder=encoder)


def build_vad(cfg: DictConfig):
    """The `vad` option's voice-activity detector, or None (every batch with a face is lip-synced)."""
    return make(cfg.vad.detector) if cfg.vad.detector is not None else None


def build_pipeline(cfg: DictConfig, source, device: torch.device, dtype: torch.dtype) -> LipsyncPipeline:
    diffusion = build_diffusion(cfg, device, dtype)
    audio = StreamingAudioFeatures(build_audio_front_end(cfg, device, dtype), device)
    aligner = FaceAligner(build_landmarks(cfg, source), cfg.model.resolution, make(cfg.align), cfg.face.nose_bias)
    return LipsyncPipeline(aligner, audio, diffusion, make(cfg.restore), build_vad(cfg))


def build_sink(cfg: DictConfig, run_dir: Path, source):
    return make(cfg.sink, path=str(run_dir / "output.mp4"), width=source.width, height=source.height)


def build_executor(cfg: DictConfig):
    return make(cfg.executor)
