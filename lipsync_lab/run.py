"""Compose one run: source → pipeline (face, audio, diffusion, restore) → sink, timed, with results on disk."""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from lipsync_lab.audio.features import StreamingAudioFeatures, lookahead_frames
from lipsync_lab.audio.whisper import WhisperFeatures
from lipsync_lab.diffusion.denoise import LipsyncDiffusion
from lipsync_lab.diffusion.latentsync import max_frames_per_call
from lipsync_lab.diffusion.models import announce, build_scheduler, build_unet, build_vae, vae_latent_scale
from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.face.align import FaceAligner
from lipsync_lab.face.landmarks import LandmarkDetector
from lipsync_lab.face.mask import mouth_mask
from lipsync_lab.media.sink import make_sink
from lipsync_lab.media.source import FPS, SAMPLES_PER_FRAME, iter_batches
from lipsync_lab.pipeline import LipsyncPipeline
from lipsync_lab.results import format_summary, summarize, timings_frame, write_run
from lipsync_lab.timing import BatchTimer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LipsyncInputError("device", f"{name} requested but CUDA is not available here")
    return torch.device(name)


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_metadata(cfg: DictConfig, device: torch.device) -> dict:
    import diffusers
    import transformers

    return dict(
        variant=cfg.variant, date=dt.datetime.now().isoformat(timespec="seconds"), git_commit=git_commit(),
        device=torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__,
        python=platform.python_version(), config=OmegaConf.to_container(cfg, resolve=True),
    )


def build_source(cfg: DictConfig):
    """Instantiate the source group's `_target_`, surfacing bad input as our one-line error, not Hydra's wrapper."""
    missing = [k for k in cfg.source if OmegaConf.is_missing(cfg.source, k)]
    if missing:
        raise LipsyncInputError(f"source.{missing[0]}", f"not set: pass source.{missing[0]}=PATH")
    try:
        return instantiate(cfg.source, max_frames=cfg.max_frames)
    except InstantiationException as e:
        if isinstance(e.__cause__, LipsyncInputError):
            raise e.__cause__ from None
        raise


def build_pipeline(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> LipsyncPipeline:
    res = int(cfg.model.resolution)
    unet = build_unet(cfg.model, cfg.seed).to(device, dtype)
    limit = max_frames_per_call(unet)
    if limit is not None and cfg.batch_frames > limit:  # say so now, not after the first batch's face work
        raise LipsyncInputError("batch_frames", f"{cfg.batch_frames} frames per UNet call, but model={cfg.model.name}"
                                                f" takes at most {limit} (its temporal position table)")
    vae = build_vae(cfg.vae, cfg.model.vae_size, cfg.seed).to(device, dtype)
    with announce("Building whisper-tiny audio encoder"):
        whisper = WhisperFeatures.build(cfg.audio.checkpoint, cfg.seed).to(device, dtype)
    scaling, shift = vae_latent_scale(cfg.vae)
    diffusion = LipsyncDiffusion(
        unet, vae, build_scheduler(cfg.scheduler), mouth_mask(res, cfg.face.mask_path), steps=cfg.steps,
        guidance_scale=cfg.guidance_scale, scaling_factor=scaling, shift_factor=shift, device=device, dtype=dtype,
        seed=cfg.seed)
    detector = LandmarkDetector(cfg.face.detect_size, cfg.face.upsample, cfg.face.smooth)
    audio = StreamingAudioFeatures(whisper, cfg.audio.left_context_s)
    return LipsyncPipeline(FaceAligner(detector, res), audio, diffusion)


def stream(cfg: DictConfig, source, pipeline: LipsyncPipeline, sink, device: torch.device, lookahead: int):
    """Source → batches → pipeline → sink, one BatchTimer per batch. Returns (rows, first batch s, wall s)."""
    batches = iter_batches(source, cfg.batch_frames, lookahead)
    rows, first_batch_s = [], None
    start = time.perf_counter()
    bar = tqdm(total=source.n_frames, unit="frame", desc="lip-sync", disable=None, dynamic_ncols=True)
    try:
        for index in range((source.n_frames + cfg.batch_frames - 1) // cfg.batch_frames):
            timer = BatchTimer(index, 0, warmup=index < cfg.warmup_batches, device=device, sync=cfg.timing.sync,
                               run_start=start)
            with timer.stage("read"):
                batch = next(batches)
            timer.frames = len(batch.frames)
            out = pipeline(batch, timer)
            with timer.stage("write"):
                lo = batch.start * SAMPLES_PER_FRAME
                sink.write(out, source.audio[lo:lo + len(out) * SAMPLES_PER_FRAME])
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - start
            rows += timer.rows(cfg.variant)
            if cfg.print_batches:
                tqdm.write(timer.report())
            bar.update(len(out))  # the bar's rate is the live frames per second
        sink.close()
    except BaseException:
        sink.abort()  # never leave an output that looks complete
        raise
    finally:
        bar.close()
    return rows, first_batch_s, time.perf_counter() - start


def run(cfg: DictConfig, run_dir: str | os.PathLike) -> dict:
    """Stream the configured source through the pipeline; write results under run_dir; return the summary."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    # diffusers warns on every `.to(dtype)` of a model built from a config (a from_pretrained concern); our own
    # log says what is built and how
    diffusers_logging.set_verbosity_error()
    device = resolve_device(cfg.device.name)
    dtype = DTYPES[cfg.precision.dtype]
    source = build_source(cfg)
    log.info("Source %s: %d frames of %dx%d at %d fps, %.2f s of audio", source.name, source.n_frames,
             source.width, source.height, FPS, len(source.audio) / 16000)
    t_build = time.perf_counter()
    pipeline = build_pipeline(cfg, device, dtype)
    build_s = time.perf_counter() - t_build
    if cfg.warmup_batches:
        log.info("The first %d batch(es) are warm-up: they pay one-time costs (first calls, allocator, caches) "
                 "and are left out of the summary", cfg.warmup_batches)

    lookahead = lookahead_frames(cfg.audio.lookahead_s)
    sink = make_sink(cfg.sink, str(run_dir / "output.mp4"), source.width, source.height)
    rows, first_batch_s, wall_s = stream(cfg, source, pipeline, sink, device, lookahead)

    df = timings_frame(rows)
    summary = summarize(df)
    summary.update(
        build_s=build_s, stream_wall_s=wall_s, stream_fps=source.n_frames / wall_s, first_batch_s=first_batch_s,
        # a live stream's first output frame also waits for its batch to fill and for the audio look-ahead
        live_first_frame_latency_s=first_batch_s + (cfg.batch_frames - 1 + lookahead) / FPS,
        audio_lookahead_frames=lookahead, output=sink.path,
    )
    write_run(run_dir, df, dict(meta=run_metadata(cfg, device), summary=summary))
    print(format_summary(summary))
    print(f"Models built in {build_s:.1f} s; stream {source.n_frames} frames in {wall_s:.1f} s "
          f"({summary['stream_fps']:.2f} fps incl. warm-up); live first-frame latency "
          f"{summary['live_first_frame_latency_s']:.2f} s")
    print(f"Results: {run_dir}")
    return summary
