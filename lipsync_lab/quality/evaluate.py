"""A finished run's quality: LatentSync's sync evaluation (SyncNet LSE-C / LSE-D / AV offset) of its output video,
and self-reconstruction metrics of its face crops. Read from the run folder only, after the stream: the
evaluation never touches the timed stream, and its cost is its own (`cost_s`).

    evaluate_run(run_dir, QualitySettings(...)) → {"syncnet": {...}, "reconstruction": {...}, "cost_s": …}

Every figure that could not be computed carries `why` (no output video, no face, tracks too short, no ground
truth). SyncNet on random weights (no `syncnet` file) is computed — the code path is real — and labelled
`random_weights: true` with a `label`; the tables print it as such, never as a quality result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.media.source import SAMPLES_PER_FRAME
from lipsync_lab.quality import faces
from lipsync_lab.quality.reconstruction import reconstruction, self_driven
from lipsync_lab.quality.syncnet import (LIP_FRAMES, embed, load_syncnet, mfcc, random_syncnet, sync_scores)

log = logging.getLogger(__name__)

RANDOM_LABEL = "RANDOM WEIGHTS: checks the code path, not a quality result (give quality.syncnet=syncnet_v2.model)"


@dataclass
class QualitySettings:
    syncnet: str | None = None    # syncnet_v2.model; None = seeded random weights (labelled)
    s3fd: str | None = None       # sfd_face.pth: detect faces as upstream does; None = the run's own tracked boxes
    min_frames: int = 50          # shortest face track scored (upstream's min_track)
    max_frames: int | None = 3000  # frames of the output read (None = all); the rest is said, not scored
    vshift: int = 15              # offsets searched: −vshift … +vshift frames (upstream's)
    batch: int = 20               # sync windows per SyncNet call (upstream's)
    seed: int = 0                 # the random weights' seed
    device: str = "cpu"
    net: object = field(default=None, repr=False)  # the SyncNet, if already loaded (a run loads it before its stream)
    detector: object = field(default=None, repr=False)  # the S3FD detector, likewise

    @classmethod
    def from_config(cls, node, device: str = "cpu") -> QualitySettings:
        keys = cls.__dataclass_fields__
        given = {k: node[k] for k in keys if k in node and k not in ("device", "net", "detector")}
        return cls(**given, device=str(device))


def evaluate_run(run_dir: str | Path, settings: QualitySettings, record: dict | None = None) -> dict:
    """The quality of one finished run folder (module docstring). `record`: its summary.json, if already read."""
    from lipsync_lab.results import read_record

    run_dir = Path(run_dir)
    record = record or read_record(run_dir)
    config = (record.get("meta") or {}).get("config") or {}
    t0 = time.perf_counter()
    out = dict(reconstruction=_reconstruction(run_dir, config), syncnet=_syncnet(run_dir, record, settings))
    out["cost_s"] = time.perf_counter() - t0
    return out


def _reconstruction(run_dir: Path, config: dict) -> dict:
    from lipsync_lab.compare import load_crops, random_weights

    why = self_driven(config)
    if why:
        return dict(why=why)
    crops = load_crops(run_dir)
    if crops is None or "originals" not in crops:
        return dict(why="no crops.npz with the original crops (save_crops=0, or an older run)")
    # a random-weight UNet's mouth says how far the computation moved it, not how well it reconstructs
    return dict(reconstruction(crops["crops"], crops["originals"], crops["regenerated"]),
                random_weights=random_weights(config))


def _syncnet(run_dir: Path, record: dict, settings: QualitySettings) -> dict:
    t0 = time.perf_counter()
    random_weights = settings.syncnet is None
    out = dict(weights=f"random (seed {settings.seed})" if random_weights else str(settings.syncnet),
               random_weights=random_weights, label=RANDOM_LABEL if random_weights else None,
               faces="s3fd" if settings.s3fd else "run", min_frames=settings.min_frames, vshift=settings.vshift,
               lse_c=None, lse_d=None, av_offset=None, tracks=[], dropped=[], frames_evaluated=0, why=None)
    out["faces_why"] = (f"S3FD ({settings.s3fd}) on the output frames, as upstream detects" if settings.s3fd else
                        "the run's own tracked face boxes (68-landmark extent): the faces it lip-synced; no "
                        "sfd_face.pth given")
    video = _output_video(run_dir, record)
    if video is None:
        out["why"] = "no output video (sink=none, or the run wrote none)"
        return _done(out, t0)
    net = settings.net if settings.net is not None else (
        random_syncnet(settings.seed) if random_weights else load_syncnet(settings.syncnet))
    net = net.to(settings.device)
    frames_total = _frame_count(video)
    limit = frames_total if settings.max_frames is None else min(frames_total, int(settings.max_frames))
    boxes, starts = _run_boxes(run_dir, limit), set()
    if settings.s3fd:
        *detected, starts = _s3fd_boxes(video, settings, limit)
        out["crop_iou_run_vs_s3fd"] = _crop_agreement(boxes, detected)
        boxes = tuple(detected)
    if boxes is None or not len(boxes[0]):
        out["why"] = "no face in the output" + ("" if settings.s3fd or boxes is not None else
                                                " (no face_boxes.npz: an older run)")
        return _done(out, t0)
    kept, dropped = faces.tracks(boxes[0], settings.min_frames, starts)
    out["dropped"] = [list(s) for s in dropped]
    if not kept:
        out["why"] = (f"every face track is shorter than min_frames={settings.min_frames} (longest "
                      f"{max(b - a for a, b in dropped)} frames; upstream drops tracks under 50)")
        return _done(out, t0)
    from lipsync_lab.media.file import load_audio

    try:
        audio = load_audio(str(video))
    except LipsyncInputError as e:  # an output without (readable) speech has nothing to sync against
        out["why"] = f"no audio to score against in {video.name}: {e.problem}"
        return _done(out, t0)
    crops = _track_crops(video, boxes, kept, limit)
    for (start, stop), track in zip(kept, crops):
        sound = audio[start * SAMPLES_PER_FRAME: stop * SAMPLES_PER_FRAME]
        lips, speech = embed(net, track, mfcc(sound), settings.device, settings.batch)
        if len(lips) == 0:
            continue
        scores = sync_scores(lips, speech, settings.vshift)
        out["tracks"].append(dict(start=start, stop=stop, windows=len(lips), **scores))
        out["frames_evaluated"] += stop - start
    if not out["tracks"]:
        out["why"] = f"no track has audio for a {LIP_FRAMES}-frame window"
        return _done(out, t0)
    # upstream reports the mean confidence over tracks and int(mean offset); LSE-D likewise the mean
    out["lse_c"] = float(np.mean([t["lse_c"] for t in out["tracks"]]))
    out["lse_d"] = float(np.mean([t["lse_d"] for t in out["tracks"]]))
    out["av_offset"] = int(np.mean([t["av_offset"] for t in out["tracks"]]))
    if limit < frames_total:
        out["note"] = f"first {limit} of {frames_total} frames read (quality.max_frames)"
    return _done(out, t0)


def _done(out: dict, t0: float) -> dict:
    out["cost_s"] = time.perf_counter() - t0
    return out


def _output_video(run_dir: Path, record: dict) -> Path | None:
    named = (record.get("summary") or {}).get("output")
    for candidate in (named, run_dir / "output.mp4"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _frame_count(video: Path) -> int:
    import av

    with av.open(str(video)) as c:
        # the mp4 header's count where it has one (the sink's files do); else decode to count
        return c.streams.video[0].frames or sum(1 for _ in c.decode(video=0))


def _frames(video: Path, limit: int):
    """(index, RGB frame) of the output video, its first `limit` frames."""
    import av

    with av.open(str(video)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i >= limit:
                break
            yield i, frame.to_ndarray(format="rgb24")


def _run_boxes(run_dir: Path, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    path = run_dir / faces.BOXES_FILE
    if not path.is_file():
        return None
    with np.load(path) as f:
        frames, boxes = f["frames"], f["boxes"]
    keep = frames < limit
    return frames[keep], boxes[keep]


def _s3fd_boxes(video: Path, settings: QualitySettings, limit: int) -> tuple[np.ndarray, np.ndarray, set]:
    """Per frame, the best-scoring S3FD detection (upstream's conf_th 0.9 at scale 0.25) → (frames, boxes, starts):
    a frame whose box overlaps the previous frame's by IoU ≤ 0.5 starts a new track (upstream links by IoU > 0.5)."""
    from lipsync_lab.quality.s3fd import S3FD

    detector = settings.detector if settings.detector is not None else S3FD.from_file(settings.s3fd, settings.device)
    frames, boxes, starts, previous = [], [], set(), None
    for i, rgb in _frames(video, limit):
        found = detector.detect(rgb, conf_th=0.9, scale=0.25)
        if not len(found):
            previous = None
            continue
        box = found[0, :4]
        if previous is not None and faces.window_iou(tuple(previous), tuple(box)) <= 0.5:
            starts.add(i)
        frames.append(i), boxes.append(box)
        previous = box
    return np.asarray(frames, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4), starts


def _crop_agreement(run: tuple | None, detected: tuple) -> dict:
    """How much the run's crop and S3FD's crop differ on the frames both have: the IoU of their crop windows."""
    if run is None or not len(run[0]) or not len(detected[0]):
        return dict(frames=0, mean_iou=None, min_iou=None)
    common, ia, ib = np.intersect1d(run[0], detected[0], return_indices=True)
    mine, theirs = faces.geometry(run[1][ia]), faces.geometry(detected[1][ib])  # each frame's own box, unfiltered
    ious = [faces.window_iou(faces.crop_window(*a), faces.crop_window(*b)) for a, b in zip(mine, theirs)]
    return dict(frames=int(len(common)), mean_iou=float(np.mean(ious)) if ious else None,
                min_iou=float(np.min(ious)) if ious else None)


def _track_crops(video: Path, boxes: tuple[np.ndarray, np.ndarray], kept: list[tuple[int, int]],
                 limit: int) -> list[np.ndarray]:
    """The (T, 224, 224, 3) BGR crops of each kept track, in one pass over the video."""
    frame_ids, frame_boxes = boxes
    plan = {}  # frame → (track, position, centre x, centre y, half-size)
    out = []
    for t, (start, stop) in enumerate(kept):
        sel = (frame_ids >= start) & (frame_ids < stop)
        geometry = faces.smooth(frame_boxes[sel])
        for k, (frame, g) in enumerate(zip(frame_ids[sel], geometry)):
            plan[int(frame)] = (t, k, *g)
        out.append(np.zeros((stop - start, faces.CROP, faces.CROP, 3), np.uint8))
    for i, rgb in _frames(video, limit):
        if i in plan:
            t, k, cx, cy, half = plan[i]
            out[t][k] = faces.crop(rgb, cx, cy, half)
    return out


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def format_quality(quality: dict) -> str:
    """The lines a run (or `python -m lipsync_lab.quality`) prints: sync scores, labelled; reconstruction; cost."""
    sync, recon = quality.get("syncnet") or {}, quality.get("reconstruction") or {}
    lines = []
    if sync.get("why"):
        lines.append(f"SyncNet: not computed: {sync['why']}")
    elif sync:
        tag = f" [{sync['label']}]" if sync.get("random_weights") else ""
        lines.append(f"SyncNet{tag}: LSE-C {sync['lse_c']:.3f}, LSE-D {sync['lse_d']:.3f}, AV offset "
                     f"{sync['av_offset']} frames over {len(sync['tracks'])} track(s), {sync['frames_evaluated']} "
                     f"frames; faces: {sync['faces_why']}; tracks under {sync['min_frames']} frames dropped: "
                     f"{len(sync['dropped'])}")
    if sync.get("crop_iou_run_vs_s3fd"):
        agree = sync["crop_iou_run_vs_s3fd"]
        lines.append(f"Crop agreement, the run's boxes vs S3FD's: mean IoU {_fmt(agree['mean_iou'], '.3f')} "
                     f"(min {_fmt(agree['min_iou'], '.3f')}) over {agree['frames']} frames")
    if recon.get("why"):
        lines.append(f"Reconstruction: not computed: {recon['why']}")
    elif recon:
        tag = " [random UNet weights: not a quality result]" if recon.get("random_weights") else ""
        lines.append(f"Reconstruction{tag} (generated vs original crop, mouth region, {recon['frames']} frames): PSNR "
                     f"{recon['psnr_db']:.2f} dB, SSIM {recon['ssim']:.4f}, mean |Δ| {recon['mean_abs']:.3f}")
    lines.append(f"Quality evaluation cost {quality.get('cost_s', 0):.1f} s (after the stream; not in the stage "
                 f"timings)")
    return "\n".join(lines)
