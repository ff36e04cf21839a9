"""One run, as numbered steps: build → warm-up call → stream (executor) → summary → results on disk.

Every way a run ends leaves its folder in a known state (`summary.json`'s `status`):
  running      written first: a folder whose run was killed (SIGKILL, power loss) keeps it, and the collectors list
               it as incomplete; its records so far are in `partial/` (recording.py), its mp4 only under a
               `.partial.mp4` name
  ok           the stream ended: timings.parquet, stream.parquet, summary, output.mp4
  interrupted  SIGINT/SIGTERM/SIGUSR2 (stopping.py): the stream stopped at a batch boundary; the summary covers the
               batches done and output.mp4 holds every frame written, with its audio. A second signal stops at once
               (`interrupted`, output discarded)
  failed       bad input or a bug: the error's first line; no result files that look complete
"""

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
from omegaconf import DictConfig, OmegaConf

from lipsync_lab.audio.features import lookahead_frames
from lipsync_lab.build import DTYPES, build_executor, build_pipeline, build_sink, build_source
from lipsync_lab.devices import resolve_device
from lipsync_lab.executors.stream import StreamSettings
from lipsync_lab.flops import add_achieved_compute
from lipsync_lab.media.source import FPS
from lipsync_lab.optimize import CompileReport
from lipsync_lab.profiling import StreamProfiler
from lipsync_lab.quality import QualitySettings, evaluate_run, format_quality
from lipsync_lab.quality.faces import BoxRecorder
from lipsync_lab.quality.reconstruction import self_driven
from lipsync_lab.recording import ChunkedRecorder
from lipsync_lab.results import (CropRecorder, format_memory, format_stream, format_summary, memory_summary,
                                 stream_summary, summarize, write_ended, write_run, write_running)
from lipsync_lab.schema import check
from lipsync_lab.stopping import HardStop, StopOnSignal
from lipsync_lab.timing import ModelMemory

log = logging.getLogger(__name__)


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_metadata(cfg: DictConfig, device: torch.device | None) -> dict:
    import diffusers
    import transformers

    if device is None:
        name = "unknown (the run ended before choosing one)"
    elif device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return dict(
        variant=cfg.variant, date=dt.datetime.now().isoformat(timespec="seconds"), git_commit=git_commit(),
        device=name, torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__,
        python=platform.python_version(), config=OmegaConf.to_container(cfg, resolve=True),
    )


def run(cfg: DictConfig, run_dir: str | os.PathLike) -> dict:
    """Stream the configured source through the pipeline; write results under run_dir; return the summary
    (`summary["status"]`: ok, or interrupted when a signal stopped the stream early)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"device": None}
    write_running(run_dir, run_metadata(cfg, None))
    with StopOnSignal() as stop:
        try:
            check(cfg)  # every key's type and range (schema.py), as the command line checks them
            return _run(cfg, run_dir, stop, state)
        except HardStop as e:
            write_ended(run_dir, "interrupted", f"{e}; output discarded", run_metadata(cfg, state["device"]))
            raise
        except BaseException as e:
            write_ended(run_dir, "failed", e, run_metadata(cfg, state["device"]))
            raise


def _run(cfg: DictConfig, run_dir: Path, stop, state: dict) -> dict:
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    # diffusers warns on every `.to(dtype)` of a model built from a config (a from_pretrained concern); our own
    # log says what is built and how
    diffusers_logging.set_verbosity_error()
    device = state["device"] = resolve_device(cfg.device.name)
    dtype = DTYPES[cfg.precision.dtype]

    # 1. Build every stage (the one place: build.py); the models' memory is measured around it
    source = build_source(cfg)
    log.info("Source %s: %d frames of %dx%d at %d fps, %.2f s of audio", source.name, source.n_frames,
             source.width, source.height, FPS, len(source.audio) / 16000)
    memory = ModelMemory(device)
    t_build = time.perf_counter()
    pipeline = build_pipeline(cfg, source, device, dtype)
    build_s = time.perf_counter() - t_build
    memory.built()
    report = pipeline.diffusion.compile_report or CompileReport()
    quality = _quality_settings(cfg, device)  # quality=syncnet: its weights are read now, not after the stream

    # 2. One synthetic full batch through the diffusion stage: compiles what is compiled (compile_s), pays the
    #    first-call costs of the rest; the random state is restored, so the output does not depend on it
    compiled = " + ".join(report.targets)
    log.info("Warm-up call of the diffusion stage%s", f" (compiling {compiled})" if compiled else "")
    first_call_s = pipeline.diffusion.warm_up()
    memory.warmed_up()
    if report.compiled:
        report.compile_s = first_call_s
        log.info("Compiled %s in %.1f s (first call, before the stream)", compiled, first_call_s)
    if cfg.warmup_batches:
        log.info("The first %d batch(es) are warm-up: they pay one-time costs (first calls, allocator, caches) "
                 "and are left out of the summary", cfg.warmup_batches)
    else:
        report.warm()

    # 3. Stream: source → executor → sink, every stage of every batch timed; per batch, the observers below
    executor = build_executor(cfg)
    # the original crops beside the generated ones only where they are ground truth (self-reconstruction)
    crops = CropRecorder(cfg.save_crops, pipeline.diffusion.regenerated_region(),
                         originals=self_driven(OmegaConf.to_container(cfg, resolve=True)) is None)
    boxes = BoxRecorder()
    profiler = StreamProfiler.from_config(cfg, run_dir, device)  # profile=true; a no-op otherwise

    def on_batch(index, result):
        profiler.step()  # one profiler step per finished batch
        crops.add(result.face_indices, result.faces, result.originals)
        boxes.add(result.face_indices, result.boxes)
        if index == cfg.warmup_batches - 1:
            report.warm()

    settings = StreamSettings(
        batch_frames=cfg.batch_frames, lookahead=lookahead_frames(cfg.audio.lookahead_s),
        warmup_batches=cfg.warmup_batches, device=device, sync=cfg.timing.sync, run_id=cfg.variant,
        print_batches=cfg.print_batches, pace=cfg.source.get("pace", "none"), stop=stop)
    sink = build_sink(cfg, run_dir, source)
    try:
        with profiler:
            streamed = executor.stream(source, pipeline, sink, settings, ChunkedRecorder(run_dir), on_batch)
    finally:
        pipeline.close()
    report.finish()

    # 4. The summary: stage medians, the stream as it happened, memory, achieved compute
    status = "interrupted" if streamed.interrupted else "ok"
    summary = dict(status=status, interrupted_by=streamed.interrupted, frames_done=streamed.frames,
                   batches_done=streamed.batches, frames_total=source.n_frames)
    if streamed.batches:
        timings, stream = streamed.recorder.timings(), streamed.recorder.stream()
        summary.update(summarize(timings), stream=stream_summary(stream),
                       first_batch_s=float(stream["written_s"].iloc[0]),
                       landmarks_cached_frames=int(timings.loc[timings["stage"] == "face", "landmarks_cached"].sum()))
    summary.update(
        memory=memory_summary(memory, streamed), build_s=build_s, first_call_s=first_call_s,
        compile=report.as_dict(), compile_s=report.compile_s, compiled=report.targets,
        graphs_compiled_after_warmup=report.graphs_after_warmup, static_shapes=report.static_shapes,
        stream_wall_s=streamed.wall_s, stream_fps=streamed.frames / streamed.wall_s if streamed.wall_s else None,
        executor=type(executor).__name__, stages_overlap=executor.overlaps_stages,
        audio_lookahead_frames=settings.lookahead, output=sink.path if streamed.batches else None,
        trace=profiler.paths())
    if streamed.batches:
        add_achieved_compute(summary, cfg, pipeline, device, dtype)  # summary["flops"], stages' tflops

    # 5. Results on disk, and the printed report
    crops.save(run_dir)
    boxes.save(run_dir)
    record = dict(status=status, meta=run_metadata(cfg, device), summary=summary)
    write_run(run_dir, record)

    # 6. quality=syncnet: sync scores of output.mp4 and reconstruction metrics, read back from the run folder after
    #    the stream is written (nothing of it is in the stage timings; its cost is its own)
    if quality is not None and streamed.interrupted:  # whoever stopped the run wants it to end now
        log.warning("Quality evaluation skipped: the run was interrupted (python -m lipsync_lab.quality %s scores "
                    "what it wrote)", run_dir)
    elif quality is not None and streamed.batches:
        log.info("Quality evaluation (after the stream, not timed with it)")
        summary["quality"] = evaluate_run(run_dir, quality, record)
        write_run(run_dir, record)
    if streamed.batches:
        print(format_summary(summary))
        print(format_stream(summary["stream"]))
    print(format_memory(summary["memory"]))
    compile_note = f"; compile {report.compile_s:.1f} s (first call)" if report.compile_s is not None else ""
    print(f"Models built in {build_s:.1f} s{compile_note}; stream {streamed.frames} frames in "
          f"{streamed.wall_s:.1f} s ({summary['stream_fps'] or 0:.2f} fps incl. warm-up)")
    if report.graphs_after_warmup:
        print(f"Warning: {report.graphs_after_warmup} graph(s) compiled after warm-up; their cost is inside the "
              f"steady-state times")
    if summary.get("quality"):
        print(format_quality(summary["quality"]))
    print(f"Results: {run_dir}")
    return summary


def _quality_settings(cfg: DictConfig, device: torch.device) -> QualitySettings | None:
    """quality=syncnet's settings, its weights files read now (a bad file fails the run in one line before its
    stream), or None for quality=none."""
    if cfg.quality.name == "none":
        return None
    settings = QualitySettings.from_config(OmegaConf.to_container(cfg.quality, resolve=True), device)
    if settings.syncnet:
        from lipsync_lab.quality.syncnet import load_syncnet

        settings.net = load_syncnet(settings.syncnet)
    if settings.s3fd:
        from lipsync_lab.quality.s3fd import S3FD

        settings.detector = S3FD.from_file(settings.s3fd, settings.device)
    return settings
