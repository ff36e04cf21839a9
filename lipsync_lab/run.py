"""Compose one run: build (build.py) → warm-up call → stream (executor) → results on disk.

A run that fails — bad input or a bug — still leaves a `summary.json` saying `"status": "failed"` and why, so a
results collector lists it instead of skipping an empty folder silently.
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
from lipsync_lab.flops import add_achieved_compute
from lipsync_lab.media.source import FPS
from lipsync_lab.profiling import StreamProfiler
from lipsync_lab.results import (CropRecorder, format_stream, format_summary, stream_frame, stream_summary, summarize,
                                 timings_frame, write_failed, write_run)

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
        name = "unknown (the run failed before choosing one)"
    elif device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return dict(
        variant=cfg.variant, date=dt.datetime.now().isoformat(timespec="seconds"), git_commit=git_commit(),
        device=name, torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__,
        python=platform.python_version(), config=OmegaConf.to_container(cfg, resolve=True),
    )


def graphs_compiled() -> int:
    """Graphs torch.compile has compiled in this process so far (a recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run(cfg: DictConfig, run_dir: str | os.PathLike) -> dict:
    """Stream the configured source through the pipeline; write results under run_dir; return the summary."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"device": None}
    try:
        return _run(cfg, run_dir, state)
    except BaseException as e:
        write_failed(run_dir, e, run_metadata(cfg, state["device"]))
        raise


def _run(cfg: DictConfig, run_dir: Path, state: dict) -> dict:
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    # diffusers warns on every `.to(dtype)` of a model built from a config (a from_pretrained concern); our own
    # log says what is built and how
    diffusers_logging.set_verbosity_error()
    device = state["device"] = resolve_device(cfg.device.name)
    dtype = DTYPES[cfg.precision.dtype]
    source = build_source(cfg)
    log.info("Source %s: %d frames of %dx%d at %d fps, %.2f s of audio", source.name, source.n_frames,
             source.width, source.height, FPS, len(source.audio) / 16000)

    # 1. Build every stage (the one place: build.py); compilation is lazy
    t_build = time.perf_counter()
    pipeline = build_pipeline(cfg, source, device, dtype)
    build_s = time.perf_counter() - t_build
    compiled = list(cfg.compile.targets)

    # 2. One synthetic full batch through the diffusion stage: compiles what is compiled (compile_s), pays the
    #    first-call costs of the rest; the random state is restored, so the output does not depend on it
    log.info("Warm-up call of the diffusion stage%s", f" (compiling {' + '.join(compiled)})" if compiled else "")
    first_call_s = pipeline.diffusion.warm_up()
    compile_s = first_call_s if compiled else None
    if compiled:
        log.info("Compiled %s in %.1f s (first call, before the stream)", " + ".join(compiled), compile_s)
    if cfg.warmup_batches:
        log.info("The first %d batch(es) are warm-up: they pay one-time costs (first calls, allocator, caches) "
                 "and are left out of the summary", cfg.warmup_batches)

    # 3. Stream: source → executor → sink, every stage of every batch timed
    crops = CropRecorder(cfg.save_crops, regenerated=(pipeline.diffusion.mask[0, 0] == 0).cpu().numpy())
    graphs = {"after_warmup": graphs_compiled() if compiled and not cfg.warmup_batches else None}

    profiler = StreamProfiler.from_config(cfg, run_dir, device)  # profile=true; a no-op otherwise

    def on_batch(index, result):
        profiler.step()  # one profiler step per finished batch
        crops.add(result.face_indices, result.faces)
        if compiled and index == cfg.warmup_batches - 1:
            graphs["after_warmup"] = graphs_compiled()

    lookahead = lookahead_frames(cfg.audio.lookahead_s)
    sink = build_sink(cfg, run_dir, source)
    try:
        with profiler:
            streamed = build_executor(cfg).stream(
                source, pipeline, sink, batch_frames=cfg.batch_frames, lookahead=lookahead,
                warmup_batches=cfg.warmup_batches, device=device, sync=cfg.timing.sync, run_id=cfg.variant,
                print_batches=cfg.print_batches, on_batch=on_batch, pace=cfg.source.get("pace", "none"))
    finally:
        pipeline.close()

    # 4. Results
    df = timings_frame(streamed.rows)
    stream = stream_frame(streamed.batches)
    summary = summarize(df)
    summary["stream"] = stream_summary(stream)
    recompiled = None
    if compiled and graphs["after_warmup"] is not None:
        recompiled = graphs_compiled() - graphs["after_warmup"]
    summary.update(
        build_s=build_s, first_call_s=first_call_s, compile_s=compile_s, compiled=compiled,
        graphs_compiled_after_warmup=recompiled, static_shapes=bool(cfg.compile.static_shapes),
        stream_wall_s=streamed.wall_s, stream_fps=source.n_frames / streamed.wall_s,
        first_batch_s=float(stream["written_s"].iloc[0]), executor=cfg.executor._target_.rsplit(".", 1)[-1],
        audio_lookahead_frames=lookahead, output=sink.path,
        landmarks_cached_frames=int(df.loc[df["stage"] == "face", "landmarks_cached"].sum()),
        trace=profiler.paths(),
    )
    add_achieved_compute(summary, cfg, pipeline, device, dtype)  # summary["flops"], stages' tflops / peak_fraction
    crops.save(run_dir)
    write_run(run_dir, df, dict(status="ok", meta=run_metadata(cfg, device), summary=summary), stream)
    print(format_summary(summary))
    print(format_stream(summary["stream"]))
    compile_note = f"; compile {compile_s:.1f} s (first call)" if compile_s is not None else ""
    print(f"Models built in {build_s:.1f} s{compile_note}; stream {source.n_frames} frames in "
          f"{streamed.wall_s:.1f} s ({summary['stream_fps']:.2f} fps incl. warm-up)")
    if recompiled:
        print(f"Warning: {recompiled} graph(s) compiled after warm-up; their cost is inside the steady-state times")
    print(f"Results: {run_dir}")
    return summary
