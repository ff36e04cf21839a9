"""Micro-benchmarks of single stages, outside a run: the face crop and paste-back options (cv2 vs kornia) and the
streamed audio front ends (cost and drift from upstream's offline whisper features).

They return DataFrames; `scripts/bench_restore.py` and `scripts/audio_drift.py` print them, notebooks 02 and 03
plot them. Benchmarks measure and report; they never assert.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from lipsync_lab import paths
from lipsync_lab.audio.features import StreamingAudioFeatures, cosine_drift, lookahead_frames, offline_features
from lipsync_lab.face.align import alignment_matrix, warp_faces_cv2
from lipsync_lab.face.kornia import KorniaAlign, KorniaRestore
from lipsync_lab.face.landmarks import LandmarkDetector
from lipsync_lab.face.common import roi_box
from lipsync_lab.face.restore import restore_cv2, restore_faces_cv2
from lipsync_lab.media.source import SAMPLES_PER_FRAME, iter_batches

# LatentSync's demo clip in the data folder (lipsync_lab.paths.DATA_DIR): the default input of the benchmarks
DEMO_VIDEO_NAME, DEMO_AUDIO_NAME = "demo1_video.mp4", "demo1_audio.wav"


def data_file_or_demo(name: str, make_demo: Callable[[], Path]) -> Path:
    """`name` in the data folder, or — where the folder lacks it — the file `make_demo()` returns (the embedded demo
    written out, cached), saying so in one line: a fresh clone runs the benchmarks and notebooks without the data."""
    path = paths.DATA_DIR / name
    if path.is_file():
        return path
    stand_in = make_demo()
    print(f"{name} not in {paths.DATA_DIR} (set {paths.DATA_ENV} to a folder holding it): using the embedded "
          f"demo instead, {stand_in}")
    return stand_in


def default_video() -> Path:
    """The benchmarks' default clip: the data folder's demo1_video.mp4 (a 1080×1920 talking head), else the embedded
    demo as an mp4 with its speech (512², 4 s; lipsync_lab.media.demo.demo_clip)."""
    from lipsync_lab.media.demo import demo_clip

    return data_file_or_demo(DEMO_VIDEO_NAME, demo_clip)


def default_audio() -> Path:
    """The benchmarks' default speech: the data folder's demo1_audio.wav (9.6 s), else the embedded demo's synthetic
    speech as a wav (10 s; lipsync_lab.media.demo.demo_speech)."""
    from lipsync_lab.media.demo import demo_speech

    return data_file_or_demo(DEMO_AUDIO_NAME, demo_speech)


def median_seconds(fn: Callable[[], object], device: torch.device | str, repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call (allocations, first-call costs); on CUDA the
    device is synchronised before each clock read, so queued work is charged to the call that queued it."""
    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------------------------
# Face crop (align) and paste-back (restore)


@dataclass
class FaceSample:
    """Frames of a clip that have a face, their frame → crop matrices, and faces to paste back."""

    frames: list[np.ndarray]
    matrices: list[np.ndarray]
    faces: np.ndarray          # (k, res, res, 3) uint8: the cv2 crops with the mouth region inverted
    short_side: int | None
    resolution: int

    @property
    def size(self) -> str:
        return f"{self.frames[0].shape[1]}×{self.frames[0].shape[0]}" if self.frames else "-"


def load_faces(video: str | Path | None = None, short_side: int | None = None, n: int = 8,
               resolution: int = 256) -> FaceSample:
    """The first `n` frames of `video` (None: default_video()), resized as `source.short_side` would, that have a
    face, their dlib landmarks' alignment matrices, and generated-looking faces: the cv2 crops with the mouth
    inverted, so a paste shows."""
    from lipsync_lab.media.file import FileSource

    source = FileSource(str(video or default_video()), max_frames=n, short_side=short_side)
    detector = LandmarkDetector()
    frames, matrices = [], []
    for i, frame in enumerate(source.frames()):
        landmarks = detector(frame, i)
        if landmarks is not None:
            frames.append(frame)
            matrices.append(alignment_matrix(landmarks, resolution))
    faces = warp_faces_cv2(frames, matrices, resolution) if frames else np.zeros((0, resolution, resolution, 3),
                                                                                 np.uint8)
    r = resolution / 256
    faces[:, int(150 * r):int(220 * r), int(70 * r):int(190 * r)] ^= 0xFF
    return FaceSample(frames, matrices, faces, short_side, resolution)


def align_restore_methods(device: torch.device | str, sample: FaceSample) -> list[tuple[str, str, Callable]]:
    """(stage, method, callable) for one batch on `device`. The faces reach restore as the diffusion stage hands
    them over, a tensor on the device; on a GPU the cv2 rows include what the pipeline pays around them (the
    upload of the crops, the download of the faces)."""
    device = torch.device(device)
    frames, matrices, res = sample.frames, sample.matrices, sample.resolution
    faces_dev = torch.from_numpy(sample.faces).to(device)
    upload = device.type != "cpu"

    def cv2_align():
        crops = warp_faces_cv2(frames, matrices, res)
        return torch.from_numpy(crops).to(device) if upload else crops

    align_roi, align_full = KorniaAlign(device=str(device)), KorniaAlign(device=str(device), full_frame=True)
    restore_roi, restore_full = KorniaRestore(device=str(device)), KorniaRestore(device=str(device), full_frame=True)
    return [
        ("align", "cv2" + (" (+upload)" if upload else ""), cv2_align),
        ("align", "kornia roi", lambda: align_roi(frames, matrices, res)),
        ("align", "kornia full_frame", lambda: align_full(frames, matrices, res)),
        ("restore", "cv2" + (" (+download)" if upload else ""), lambda: restore_faces_cv2(frames, faces_dev, matrices)),
        ("restore", "kornia roi", lambda: restore_roi(frames, faces_dev, matrices)),
        ("restore", "kornia full_frame", lambda: restore_full(frames, faces_dev, matrices)),
    ]


def available_devices(devices: Iterable[str]) -> list[torch.device]:
    """The named devices this machine has (cuda is dropped without CUDA)."""
    return [torch.device(d) for d in devices if not d.startswith("cuda") or torch.cuda.is_available()]


def align_restore_timings(video: str | Path | None = None, short_sides: Iterable[int | None] = (720, 1080),
                          batch: int = 8, repeats: int = 7, resolution: int = 256,
                          devices: Iterable[str] = ("cpu", "cuda")) -> pd.DataFrame:
    """ms per frame of each align/restore method, per frame size and device: one row per (device, short_side,
    stage, method) with `x_cv2` = the cv2 median over the method's, from the same run (> 1 = faster than cv2).
    A frame size whose frames have no face gets no rows. `video` None: default_video()."""
    video = video or default_video()  # resolved once: its fallback line is printed once, not per frame size
    rows = []
    for short_side in short_sides:
        sample = load_faces(video, short_side, batch, resolution)
        k = len(sample.frames)
        if not k:
            continue
        for device in available_devices(devices):
            base = {}
            for stage, method, fn in align_restore_methods(device, sample):
                seconds = median_seconds(fn, device, repeats)
                base.setdefault(stage, seconds)
                rows.append(dict(device=device.type, short_side=short_side, size=sample.size, stage=stage,
                                 method=method, faces=k, ms_per_frame=1000 * seconds / k,
                                 x_cv2=base[stage] / seconds))
    return pd.DataFrame(rows, columns=["device", "short_side", "size", "stage", "method", "faces", "ms_per_frame",
                                       "x_cv2"])


def pixel_differences(sample: FaceSample, index: int = 0, device: str = "cpu") -> dict:
    """|kornia − cv2| of one face, grey levels averaged over the RGB channels, for both operations:

    crop: the aligned crops (res × res); frame: the face pasted back into a copy of its frame, cut to the paste's
    ROI (`box` = x0, y0, x1, y1 in the frame; outside it both methods leave the frame untouched). Also the images
    themselves (crop_cv2, crop_kornia, frame_cv2, frame_kornia, in the same cut) and mean / max |Δ| per
    operation."""
    if index >= len(sample.frames):
        raise ValueError(f"face {index} asked for, but {len(sample.frames)} of the frames loaded have a face")
    frame, matrix, face = sample.frames[index], sample.matrices[index], sample.faces[index]
    res = sample.resolution
    crop_cv2 = warp_faces_cv2([frame], [matrix], res)[0]
    crop_kornia = KorniaAlign(device=device)([frame], [matrix], res)[0].cpu().numpy()
    pasted_cv2 = restore_cv2(frame, face, matrix)  # a copy: the sample's frame stays as loaded
    pasted_kornia = KorniaRestore(device=device)([frame], face[None], [matrix])[0]
    x0, y0, x1, y1 = roi_box(matrix, res, frame.shape)
    outside = np.abs(pasted_kornia.astype(np.int16) - pasted_cv2.astype(np.int16))
    outside[y0:y1, x0:x1] = 0
    cut = (slice(y0, y1), slice(x0, x1))

    def diff(a, b):
        return np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=-1)

    crop_diff, frame_diff = diff(crop_kornia, crop_cv2), diff(pasted_kornia[cut], pasted_cv2[cut])
    return dict(crop_cv2=crop_cv2, crop_kornia=crop_kornia, crop_diff=crop_diff,
                frame_cv2=pasted_cv2[cut], frame_kornia=pasted_kornia[cut], frame_diff=frame_diff,
                box=(x0, y0, x1, y1), size=sample.size,
                crop_mean_abs=float(crop_diff.mean()), crop_max_abs=float(crop_diff.max()),
                roi_mean_abs=float(frame_diff.mean()), roi_max_abs=float(frame_diff.max()),
                outside_max_abs=int(outside.max()))


# ---------------------------------------------------------------------------------------------------------------
# Audio front ends

AUDIO_OPTIONS = ["whisper", "whisper_window", "faster_whisper"]


class AudioOnly:
    """A source of audio alone, so the batcher cuts it as a run's stream would (frames are never looked at)."""

    def __init__(self, audio: np.ndarray):
        self.audio, self.n_frames = audio, len(audio) // SAMPLES_PER_FRAME

    def frames(self):
        while True:
            yield None


def stream_features(front_end, audio: np.ndarray, batch_frames: int = 8,
                    lookahead_s: float = 0.1) -> tuple[torch.Tensor, float]:
    """Every frame's features as a run streams them (batches of `batch_frames`, the audio arriving with the
    frames plus the look-ahead), and the milliseconds per frame they cost. The first batch pays first-call costs
    and is left out of the cost, as a run leaves out its warm-up batch (unless it is the only one); a front end
    keeps state across batches (completed segments), so it cannot be warmed up on other audio first."""
    stream = StreamingAudioFeatures(front_end)
    parts, seconds = [], []
    for batch in iter_batches(AudioOnly(audio), batch_frames, lookahead_frames(lookahead_s)):
        start = time.perf_counter()
        stream.push(batch.new_audio, end=batch.audio_ended)
        parts.append(stream.features(batch.frame_indices))
        seconds.append(time.perf_counter() - start)
    steady = slice(1, None) if len(parts) > 1 else slice(None)
    frames = sum(len(p) for p in parts[steady])
    return torch.cat(parts), 1000 * sum(seconds[steady]) / frames


def audio_front_ends(options: Iterable[str] = AUDIO_OPTIONS, checkpoint: str | None = None,
                     seed: int = 0) -> tuple[dict[str, object], dict[str, str]]:
    """The front end of each `audio` option (an option may carry overrides, space-separated:
    "whisper_window audio.front_end.positions=window"), built from the project's config as a run builds it, on the
    CPU in fp32; without a checkpoint the encoder's random weights are those of `seed` (the run's `seed`, as
    `WhisperFeatures.build(None, seed)`). Returns (label → front end, label → why it was skipped) — an option this
    install lacks (e.g. faster_whisper without CTranslate2) is skipped, not fatal."""
    from lipsync_lab.build import build_audio_front_end
    from lipsync_lab.config import compose

    built, skipped = {}, {}
    for option in options:
        name, *overrides = option.split()
        try:
            cfg = compose([f"audio={name}", *overrides, f"audio.checkpoint={checkpoint or 'null'}", f"seed={seed}"])
            built[option] = build_audio_front_end(cfg, torch.device("cpu"), torch.float32)
        except Exception as e:  # noqa: BLE001 — any reason an option cannot be built here is reported, not raised
            skipped[option] = f"{type(e).__name__}: {e}".splitlines()[0]
    return built, skipped


def load_speech(path: str | Path | None = None, seconds: float | None = None) -> np.ndarray:
    """16 kHz mono float32 speech: the file (None: default_audio()), tiled or cut to `seconds` (a whole number of
    frames)."""
    from lipsync_lab.media.file import load_audio

    raw = load_audio(str(path or default_audio()))
    if seconds is None:
        return raw[:len(raw) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME].astype(np.float32)
    n = int(round(seconds * 25)) * SAMPLES_PER_FRAME
    return np.resize(raw, n).astype(np.float32)  # np.resize tiles a shorter file


def audio_drift(audio: np.ndarray, front_ends: dict[str, object], checkpoint: str | None = None,
                batch_frames: int = 8, lookahead_s: float = 0.1, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stream `audio` through each front end and compare with upstream's offline features (the whole clip at once,
    30-s segments, whisper-tiny with the same weights: `checkpoint`, else the random weights of `seed` — the seed
    the front ends were built with).

    Returns (table, cosine): table has one row per front end — ms_per_frame, rel_l2 (‖streamed − offline‖ /
    ‖offline‖ over all frames), cos_min / cos_median / cos_mean of the per-frame cosine similarity; cosine has one
    column per front end, one row per frame (1.0 = the offline feature's direction)."""
    from lipsync_lab.audio.whisper import WhisperFeatures

    frames = list(range(len(audio) // SAMPLES_PER_FRAME))
    offline = offline_features(WhisperFeatures.build(checkpoint, seed), audio, frames)
    rows, cosines = [], {}
    for label, front_end in front_ends.items():
        feats, ms = stream_features(front_end, audio, batch_frames, lookahead_s)
        cos = cosine_drift(feats, offline)
        cosines[label] = cos
        rows.append(dict(front_end=label, ms_per_frame=ms, rel_l2=float((feats - offline).norm() / offline.norm()),
                         cos_min=float(cos.min()), cos_median=float(np.median(cos)), cos_mean=float(cos.mean())))
    table = pd.DataFrame(rows, columns=["front_end", "ms_per_frame", "rel_l2", "cos_min", "cos_median", "cos_mean"])
    cosine = pd.DataFrame(cosines, index=pd.Index(frames, name="frame"))
    return table, cosine


def drift_over_seeds(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """audio_drift tables of several weight seeds (seed → table) → one row per front end (in first-seen order): the
    median over the seeds of each column, the worst — rel_l2_worst (the largest rel_l2) and cos_min_worst (the
    smallest cos_min) — and `seeds`, how many seeds gave the front end a row. A drift measured on random weights
    depends on the draw: it is reported over several seeds (scripts/audio_drift.py asks for at least 5)."""
    rows = pd.concat([t.assign(seed=s) for s, t in tables.items()], ignore_index=True)
    by = rows.groupby("front_end", sort=False)
    out = by[["ms_per_frame", "rel_l2", "cos_min", "cos_median", "cos_mean"]].median()
    out["rel_l2_worst"] = by["rel_l2"].max()
    out["cos_min_worst"] = by["cos_min"].min()
    out["seeds"] = by["seed"].nunique()
    return out.reset_index()[["front_end", "seeds", "ms_per_frame", "rel_l2", "rel_l2_worst", "cos_min",
                              "cos_min_worst", "cos_median", "cos_mean"]]
