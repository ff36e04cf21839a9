"""Face tracks for the sync evaluation: the run's own tracked boxes (default) or S3FD's, and upstream's crop of them.

Upstream (`SyncNetDetector`, reference: speed-and-quality.md) detects faces with S3FD, links detections into tracks,
drops tracks under `min_track` = 50 frames, median-filters each track's box size and centre (kernel 13), and crops
the box grown by `crop_scale` = 0.4 on a grey-110 border, resized to 224². This module does the same from either
source of boxes:
  - `run`: the box around the 68 landmarks the run itself tracked for each frame (`face_boxes.npz`, written by the
    run): what the pipeline aligned and lip-synced, with no second detector to disagree with it and nothing to
    download. It is tighter than S3FD's (brows to chin, no forehead), so its crop sits a little lower on the face.
  - `s3fd`: S3FD on the output frames, as upstream does, when its file (`sfd_face.pth`) is given.
A track here is a run of consecutive frames with a face (upstream also bridges up to 25 missed detections; the
run's tracker reports a face on every frame it keeps one, so a gap is a real loss). One face per frame: the run
lip-syncs one, and S3FD's best-scoring detection is taken (upstream tracks every face, and drops tracks whose boxes
average under 100 px — not applied here: the run chose its face already).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.signal import medfilt

from lipsync_lab.quality.syncnet import CROP

CROP_SCALE = 0.4      # upstream's crop_scale
BORDER_GREY = 110     # upstream's padding value
SMOOTH_KERNEL = 13    # upstream's median filter over a track's box size and centre
BOXES_FILE = "face_boxes.npz"


def landmark_boxes(landmarks: list[np.ndarray]) -> np.ndarray:
    """(k, 4) float32 x1, y1, x2, y2: each face's 68 landmarks' extent in frame pixels."""
    if not len(landmarks):
        return np.zeros((0, 4), np.float32)
    pts = np.stack([np.asarray(p, np.float32) for p in landmarks])
    return np.concatenate([pts.min(1), pts.max(1)], axis=1)


class BoxRecorder:
    """The run's face box of every frame that had one (all frames, not a sample: a few bytes each), saved as
    `face_boxes.npz` (`frames` stream positions, `boxes` (n, 4) x1 y1 x2 y2) for the sync evaluation."""

    def __init__(self):
        self.frames: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []

    def add(self, frames: list[int], boxes: np.ndarray | None) -> None:
        if boxes is not None and len(frames):
            self.frames.append(np.asarray(frames, np.int64))
            self.boxes.append(np.asarray(boxes, np.float32))

    def save(self, run_dir) -> None:
        if self.frames:
            np.savez_compressed(Path(run_dir) / BOXES_FILE, frames=np.concatenate(self.frames),
                                boxes=np.concatenate(self.boxes))


def tracks(frames: np.ndarray, min_frames: int, starts=()) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Runs of consecutive frame numbers (a frame in `starts` also begins a new one) → (kept, dropped): [start,
    stop) spans, a span kept when it has at least `min_frames` frames."""
    frames = np.asarray(frames, np.int64)
    if not len(frames):
        return [], []
    breaks = np.flatnonzero((np.diff(frames) != 1) | np.isin(frames[1:], list(starts))) + 1
    spans = [(int(s[0]), int(s[-1]) + 1) for s in np.split(frames, breaks)]
    return [s for s in spans if s[1] - s[0] >= min_frames], [s for s in spans if s[1] - s[0] < min_frames]


def geometry(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) x1 y1 x2 y2 boxes → (n, 3) centre x, centre y, half-size (max side / 2): what upstream crops by."""
    boxes = np.asarray(boxes, np.float64)
    half = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2, half], axis=1)


def smooth(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) boxes of one track → its `geometry`, each of the three median-filtered along the track."""
    cx, cy, half = geometry(boxes).T
    kernel = min(SMOOTH_KERNEL, len(boxes) - (1 - len(boxes) % 2))  # medfilt needs an odd kernel ≤ the length
    if kernel >= 3:
        half, cx, cy = (medfilt(v, kernel) for v in (half, cx, cy))
    return np.stack([cx, cy, half], axis=1)


def crop_window(cx: float, cy: float, half: float, scale: float = CROP_SCALE) -> tuple[int, int, int, int]:
    """Upstream's crop of a box (frame pixels, x1 y1 x2 y2): (2 + 2·scale) half-sizes wide, centred across; from
    one half-size above the centre to (1 + 2·scale) below it — square, the chin and some neck in."""
    return (int(cx - half * (1 + scale)), int(cy - half), int(cx + half * (1 + scale)),
            int(cy + half * (1 + 2 * scale)))


def crop(frame_rgb: np.ndarray, cx: float, cy: float, half: float) -> np.ndarray:
    """(224, 224, 3) uint8 BGR (SyncNet was trained on cv2's channel order): the crop window, grey-110 beyond the
    frame, resized with cv2's default (bilinear) as upstream does."""
    pad = int(half * (1 + 2 * CROP_SCALE))
    x1, y1, x2, y2 = crop_window(cx + pad, cy + pad, half)
    framed = cv2.copyMakeBorder(frame_rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT,
                                value=(BORDER_GREY,) * 3)
    face = framed[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)]
    return cv2.resize(np.ascontiguousarray(face[..., ::-1]), (CROP, CROP))


def window_iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two x1 y1 x2 y2 windows."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
