"""What each CPU-side stage of a streamed run costs, in ms per frame, with the baseline options and with the fast ones,
at 1080×1920 and at 720p (a benchmark: it prints a table, never asserts).

    python scripts/bench_cpu_stages.py [--frames 48] [--repeats 3] [--short-sides 1080 720] [--threads 2]
                                       [--stages read face ...] [--fast OVERRIDE ...] [--baseline OVERRIDE ...]

Every stage is built from the project's config as a run builds it (lipsync_lab.config.compose + lipsync_lab.build),
once with the baseline overrides (none: today's defaults) and once with the fast ones (`FAST`, printed as Hydra
overrides to pass to a run), on the demo clip (demo1_video.mp4 + demo1_audio.wav in the data folder: $LIPSYNC_LAB_DATA,
default ../shared/data; where it lacks them, the embedded demo written as files, 512² — the sizes below are then
that clip's, enlarged) resized by `source.short_side`:

    read          decode + RGB at the output size (the file source's frames)
    face          landmarks + the aligned crop, in batches (FaceAligner, as the pipeline calls it), after the
                  first frame (the face's acquisition, a whole-frame search, is a one-off) — and its two parts:
      landmarks   the `face` option's detector alone
      align warp  the `align` option alone, on the same matrices for both sides
    audio         the streamed whisper features of each batch (StreamingAudioFeatures + the `audio` option)
    vad           voice activity of each batch (`vad=silero`; the baseline has none)
                  (audio and vad do not depend on the frame size: their rows at two sizes measure the same work)
    restore       the paste-back of 256² faces into their frames (the `restore` option)
    write         the mp4 sink: encode + mux, its close included (x264 works ahead in its own threads)

Repetitions alternate baseline and fast, so both see the same load (other processes may share the cores); the table
shows medians, the first repetition of each side being a warm-up (model set-up, allocations). "×" is baseline over
fast (> 1: the fast option is cheaper). Wall ms is what the stage takes; CPU ms is the process's CPU time over all
its threads (decoder, x264, OpenCV, torch), the share of the cores the stage takes from the other stages.

    stream        the whole stream into an mp4 with no model (`diffusion=passthrough`), unpaced: 1000 / its sustained fps
                  (40 ms = 25 fps), baseline options + sequential executor against fast options + pipelined; and
                  the fast options on both executors (what overlapping the stages alone brings)

Each stage is a function `stage(cfg, clip) -> (wall, CPU) seconds per frame` in STAGES; the stream section is
`stream_rows`, concatenated in main().
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from lipsync_lab.audio.features import StreamingAudioFeatures, lookahead_frames
from lipsync_lab.bench import AudioOnly, default_audio, default_video
from lipsync_lab.build import build_audio_front_end, build_landmarks, build_source, make
from lipsync_lab.config import compose
from lipsync_lab.face.align import FaceAligner, alignment_matrix, warp_faces_cv2
from lipsync_lab.face.landmarks import LandmarkDetector
from lipsync_lab.media.source import FPS, SAMPLES_PER_FRAME, iter_batches
from lipsync_lab.run import run


BASELINE: list[str] = []  # today's defaults
FAST = [
    "source.convert=swscale",          # one FFmpeg scaler for the stream, converting and resizing in one pass
    "face.detector.detect_every=10",   # HOG on every 10th frame, landmarks tracked in between
    "align.interpolation=cubic",       # the crop's warp: OpenCV's cubic (vectorised) instead of its Lanczos
    "audio=whisper_window",            # a 2-s window per batch instead of a 30-s segment
    "restore.interpolation=cubic",     # the paste-back's warp, likewise
    "sink.preset=ultrafast",           # x264's fastest preset (larger files)
    "sink.convert=cv2",                # OpenCV's RGB → I420 instead of FFmpeg's scaler
    "vad=silero",                      # not a speed-up but gating (silent batches skip diffusion): its cost shows
]
TARGETS_MS = {"read": 5, "face": 8, "audio": 2, "restore": 3, "write": 8}  # issue #9, on a 2-core machine


@dataclass
class Clip:
    """The clip at one size: its frames (as the baseline source yields them), audio, and per-frame crop matrices
    from per-frame detection (the warps of both sides get the same ones: only the warp is compared)."""

    frames: list[np.ndarray]
    audio: np.ndarray
    matrices: list[np.ndarray]
    batch: int

    def batches(self, first: int = 0):
        """(start, frames) per batch of the stream from frame `first` on."""
        for start in range(first, len(self.frames), self.batch):
            yield start, self.frames[start:start + self.batch]


@functools.cache  # resolved once: the fallback's line is printed once, not per configuration
def inputs() -> tuple[Path, Path]:
    """The clip and its speech: the data folder's demo files, else the embedded demo's (lipsync_lab.bench)."""
    return default_video(), default_audio()


def config(short_side: int, overrides: list[str], frames: int, batch: int):
    video, audio = inputs()
    return compose(["source=file", f"source.video={video}", f"source.audio={audio}", f"source.short_side={short_side}",
                    f"max_frames={frames}", f"batch_frames={batch}", *overrides])


def load_clip(short_side: int, frames: int, batch: int, resolution: int) -> Clip:
    source = build_source(config(short_side, BASELINE, frames, batch))
    pictures = list(source.frames())
    detector = LandmarkDetector(detect_size=640)
    matrices = [alignment_matrix(detector(f, i), resolution) for i, f in enumerate(pictures)]
    return Clip(pictures, source.audio, matrices, batch)


def per_frame(fn, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds per frame of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


# --- the stages: (cfg, clip) -> (wall, CPU) seconds per frame ------------------------------------------------------

def read(cfg, clip: Clip) -> tuple[float, float]:
    source = build_source(cfg)
    return per_frame(lambda: sum(1 for _ in source.frames()), source.n_frames)


def face(cfg, clip: Clip) -> tuple[float, float]:
    aligner = FaceAligner(build_landmarks(cfg, None), cfg.model.resolution, make(cfg.align), cfg.face.nose_bias)
    aligner(clip.frames[:1], [0])

    def run():
        for start, frames in clip.batches(1):
            aligner(frames, list(range(start, start + len(frames))))

    return per_frame(run, len(clip.frames) - 1)


def face_landmarks(cfg, clip: Clip) -> tuple[float, float]:
    detector = make(cfg.face.detector)
    detector(clip.frames[0], 0)
    return per_frame(lambda: [detector(f, i) for i, f in enumerate(clip.frames[1:], 1)], len(clip.frames) - 1)


def face_warp(cfg, clip: Clip) -> tuple[float, float]:
    warp, res = make(cfg.align), cfg.model.resolution
    return per_frame(lambda: [warp(frames, clip.matrices[s:s + len(frames)], res) for s, frames in clip.batches()],
                     len(clip.frames))


def audio(cfg, clip: Clip) -> tuple[float, float]:
    stream = StreamingAudioFeatures(_front_end(cfg))

    def run():
        for batch in _audio_batches(cfg, clip):
            stream.push(batch.new_audio, end=batch.audio_ended)
            stream.features(batch.frame_indices)

    with torch.inference_mode():
        return per_frame(run, len(clip.frames))


def vad(cfg, clip: Clip) -> tuple[float, float]:
    if cfg.vad.detector is None:
        return 0.0, 0.0
    detector = make(cfg.vad.detector)

    def run():
        for batch in _audio_batches(cfg, clip):
            detector.push(batch.new_audio)
            detector.has_speech(batch.start * SAMPLES_PER_FRAME, (batch.start + clip.batch) * SAMPLES_PER_FRAME)

    return per_frame(run, len(clip.frames))


def restore(cfg, clip: Clip) -> tuple[float, float]:
    res = cfg.model.resolution
    faces = warp_faces_cv2(clip.frames, clip.matrices, res)
    faces[:, int(0.6 * res):int(0.85 * res), int(0.3 * res):int(0.7 * res)] ^= 0xFF  # a changed mouth
    paste = make(cfg.restore)
    frames = [f.copy() for f in clip.frames]  # pasted in place: the clip's own frames stay as they are

    def run():
        for s, batch in clip.batches():
            paste(frames[s:s + len(batch)], faces[s:s + len(batch)], clip.matrices[s:s + len(batch)])

    return per_frame(run, len(clip.frames))


def write(cfg, clip: Clip) -> tuple[float, float]:
    h, w = clip.frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        sink = make(cfg.sink, path=os.path.join(tmp, "out.mp4"), width=w, height=h)

        def run():
            for s, frames in clip.batches():
                sink.write(frames, clip.audio[s * SAMPLES_PER_FRAME:(s + len(frames)) * SAMPLES_PER_FRAME])
            sink.close()

        return per_frame(run, len(clip.frames))


STAGES = {"read": read, "face": face, "  landmarks": face_landmarks, "  align warp": face_warp, "audio": audio,
          "vad": vad, "restore": restore, "write": write}


def _audio_batches(cfg, clip: Clip):
    """The batches as a run cuts them: each with its audio up to the look-ahead."""
    return iter_batches(AudioOnly(clip.audio), clip.batch, lookahead_frames(cfg.audio.lookahead_s))


_ENCODERS: dict[str, object] = {}


def _front_end(cfg):
    """A fresh front end (its segment state) around the option's encoder, which is built once: building a model is
    not the stage's cost."""
    target = cfg.audio.encoder._target_
    if target not in _ENCODERS:
        _ENCODERS[target] = build_audio_front_end(cfg, torch.device("cpu"), torch.float32).encoder
    return make(cfg.audio.front_end, encoder=_ENCODERS[target])


# --- sections: each returns rows of the table ----------------------------------------------------------------------

def stage_rows(short_side: int, args) -> pd.DataFrame:
    """Every stage of STAGES at one size, baseline against fast."""
    cfgs = {"baseline": config(short_side, args.baseline, args.frames, args.batch),
            "fast": config(short_side, args.fast, args.frames, args.batch)}
    clip = load_clip(short_side, args.frames, args.batch, cfgs["baseline"].model.resolution)
    size = f"{clip.frames[0].shape[1]}×{clip.frames[0].shape[0]}"
    rows = []
    for stage, fn in STAGES.items():
        if args.stages and stage.strip() not in args.stages:
            continue
        times = {name: [] for name in cfgs}
        for _ in range(args.repeats + 1):
            for name, cfg in cfgs.items():
                times[name].append(fn(cfg, clip))
        (base, base_cpu), (fast, fast_cpu) = (1000 * np.median(times[name][1:], axis=0) for name in cfgs)
        rows.append({"size": size, "stage": stage, "baseline ms": base, "fast ms": fast,
                     "×": base / fast if base > 0 and fast > 0 else float("nan"), "baseline CPU ms": base_cpu,
                     "fast CPU ms": fast_cpu, "target ms": TARGETS_MS.get(stage.strip())})
        print(f"  {size} {stage.strip():<12} {base:8.2f} → {fast:7.2f} ms/frame (CPU {base_cpu:.2f} → "
              f"{fast_cpu:.2f})", flush=True)
    return pd.DataFrame(rows)


def stream_rows(short_side: int, args) -> pd.DataFrame:
    """The whole stream into an mp4 with a model cost near zero (`diffusion=passthrough`), unpaced, as ms per frame at its
    sustained rate (1000 / sustained fps; 40 = 25 fps): the baseline options on the sequential executor against the
    fast ones on the pipelined executor, and — to show what overlapping alone brings — the fast options on both."""
    def sustained_ms(overrides: list[str], executor: str) -> tuple[float, float]:
        cfg = config(short_side, [*overrides, "diffusion=passthrough", f"executor={executor}", "print_batches=false",
                                  "save_crops=0"], args.stream_frames, args.batch)
        with tempfile.TemporaryDirectory() as folder, open(os.devnull, "w") as quiet, \
                contextlib.redirect_stdout(quiet):
            cpu = time.process_time()
            summary = run(cfg, folder)
            cpu = (time.process_time() - cpu) / summary["frames"]
        return 1000 / summary["stream"]["sustained_fps"], 1000 * cpu

    logging.getLogger("lipsync_lab").setLevel(logging.WARNING)
    runs = {"baseline, sequential": (args.baseline, "sequential"), "fast, sequential": (args.fast, "sequential"),
            "fast, pipelined": (args.fast, "pipelined")}
    ms = {name: sustained_ms(*how) for name, how in runs.items()}
    source = build_source(config(short_side, [], 1, args.batch))
    size = f"{source.width}×{source.height}"
    rows = []
    for stage, base, fast in (("stream", "baseline, sequential", "fast, pipelined"),
                              ("  pipelining alone", "fast, sequential", "fast, pipelined")):
        (b, b_cpu), (f, f_cpu) = ms[base], ms[fast]
        rows.append({"size": size, "stage": stage, "baseline ms": b, "fast ms": f, "×": b / f,
                     "baseline CPU ms": b_cpu, "fast CPU ms": f_cpu, "target ms": 1000 / FPS})
        print(f"  {size} {stage.strip():<18} {base} {b:8.2f} → {fast} {f:7.2f} ms/frame ({1000 / b:.1f} → "
              f"{1000 / f:.1f} fps)", flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=48, help="frames of the clip per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions per side (after one warm-up)")
    ap.add_argument("--short-sides", type=int, nargs="+", default=[1080, 720])
    ap.add_argument("--batch", type=int, default=8, help="frames per batch (batch_frames)")
    ap.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads (the machine's 2 cores)")
    ap.add_argument("--stages", nargs="+", help=f"only these of {[s.strip() for s in STAGES]}")
    ap.add_argument("--fast", nargs="+", default=FAST, help="the fast side's overrides (default: FAST)")
    ap.add_argument("--baseline", nargs="*", default=BASELINE, help="the baseline side's overrides (default: none)")
    ap.add_argument("--stream-frames", type=int, default=250, help="frames of each whole-stream run (0: none)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads (torch, OpenCV) on {os.cpu_count()} cores, load average "
          f"{load:.1f}; {args.frames} frames in batches of {args.batch}, median of {args.repeats} (+1 warm-up)")
    print(f"baseline: {' '.join(args.baseline) or '(the defaults)'}\nfast:     {' '.join(args.fast)}")
    sections = [stage_rows(side, args) for side in args.short_sides]
    if args.stream_frames:
        sections += [stream_rows(side, args) for side in args.short_sides]
    table = pd.concat(sections, ignore_index=True)
    print(f"\nload average {load:.1f} before, {os.getloadavg()[0]:.1f} after (where other processes share the cores, "
          f"the figures are approximate)")
    with pd.option_context("display.float_format", "{:.2f}".format, "display.width", 160):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
