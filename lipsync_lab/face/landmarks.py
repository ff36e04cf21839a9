"""68-point iBUG landmarks with dlib (HOG detector + the 68-point shape predictor from face_recognition_models).

Detection runs on a downscaled grey copy (HOG cost grows with pixels; a 1080×1920 frame would take ~10× longer),
the shape predictor on a crop around the face box (it only reads pixels near the box; handed the whole frame it
gives the same points ~1 ms later at 1080×1920). LatentSync's Laplacian smoothing damps small landmark motion
across frames (reference §2.3); its state persists across batches and resets when the face is lost.

`detect_every=k` (> 1) tracks instead of detecting: the HOG search (~9 ms a frame on 2 cores, even in its window
around the last face) runs only on frames whose index is a multiple of k, when no face is tracked, and on tracking
loss; every other frame gets the shape predictor on a box derived from the previous frame's landmarks (~1 ms).
k=10, the fast option, takes the landmarks from ~10 to ~2.2 ms a frame at 1080×1920 (scripts/bench_cpu_stages.py);
k=5 is as accurate and ~1 ms dearer; past 10 little is left to save (the predictor's ~1 ms stays), while a loss
the checks below miss would last up to k−1 frames.
The box is placed where the HOG detector's own box would sit: its offset and size relative to the landmarks are
learnt at each detection, since the predictor was trained on HOG boxes and answers differently for other boxes.
Tracking is lost (→ a HOG detection on that same frame) when
  - the box leaves the frame (less than `_IN_FRAME` of it inside): the predictor would extrapolate a face;
  - the landmarks' width is off the last detection's by more than `_SCALE_JUMP`× either way (scale drift or a
    collapsed spread), or their centre moves more than `_CENTRE_JUMP` face widths in one frame (a talking head
    moves a few pixels between frames);
  - the face no longer looks like the detected one: dlib's predictor has no confidence output and returns a
    face-shaped answer on any texture, so the grey patch under the landmarks (`_PATCH`² px) is compared with the
    patch at the last detection by normalised cross-correlation (below `_MIN_NCC` = something else is there: a
    cut, an occlusion). Measured on the demo clip: ≥ 0.7 between frames of the talking face up to ten frames
    apart, ≤ 0.2 after a cut to a shot without a face.
The periodic detection bounds drift and catches what the checks miss. Without a tracked face every frame is
searched, as with k=1, so a face that enters is picked up at once. Detection frames follow the frame index, not a
counter; a detector whose `prev` was set from outside (the landmark cache resuming) starts with a detection, since
the tracking state behind `prev` is not known. On the demo clip, k=10 keeps the landmarks within ~0.7 px (mean; 5 px
worst) of per-frame detection at 1080×1920.

dlib and its model files are loaded at the first frame that needs them, so a run whose landmarks all come from the
landmark cache (face/cache.py) works on a machine without them.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync_lab.errors import LipsyncInputError


def _models_dir() -> str:
    # face_recognition_models' __init__ imports pkg_resources (absent from current setuptools): find its files
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LipsyncInputError("face_recognition_models", "not installed: dlib's 68-point model is needed for frames "
                                                           "the landmark cache does not hold (face.cache)")
    return os.path.join(spec.submodule_search_locations[0], "models")


def laplacian_smooth(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Per landmark: w = exp(-|Δ|² / (0.3·width)), p = w·prev + (1−w)·cur (LatentSync's `laplacianSmooth`)."""
    width = cur[:, 0].max() - cur[:, 0].min()
    w = np.exp(-np.sum((cur - prev) ** 2, axis=1) / (width * 0.3))[:, None]
    return w * prev + (1 - w) * cur


_TRACK_FACE_PX = 120.0
_IN_FRAME = 0.6       # least part of the tracked box that must lie in the frame
_SCALE_JUMP = 1.5     # largest change of landmark width against the last detection, either way
_CENTRE_JUMP = 0.5    # largest landmark-centre move between frames, in landmark widths
_PATCH = 32           # side of the grey appearance patch (px)
_MIN_NCC = 0.5        # least normalised cross-correlation with the patch at the last detection


@dataclass
class _Track:
    """What tracking carries from frame to frame: the predictor's unsmoothed landmarks (the next box comes from
    them, not from the smoothed ones, so smoothing does not feed back into the box), the box relation and landmark
    width of the last detection, its appearance patch, and the smoothed landmarks handed out (`prev` must still be
    these: anything else set from outside, e.g. the landmark cache resuming, means start over with a detection)."""

    raw: np.ndarray
    box: tuple[float, float, float]
    width: float
    patch: np.ndarray
    prev: np.ndarray


def _extent(pts: np.ndarray) -> tuple[np.ndarray, float]:
    lo, hi = pts.min(0), pts.max(0)
    return (lo + hi) / 2, float(hi[0] - lo[0])


def _box_relation(box, pts: np.ndarray) -> tuple[float, float, float]:
    """(dx, dy, side) of a detector box against the landmarks' bounding box, in landmark widths."""
    centre, width = _extent(pts)
    dx = ((box.left() + box.right()) / 2 - centre[0]) / width
    dy = ((box.top() + box.bottom()) / 2 - centre[1]) / width
    return dx, dy, box.width() / width


class LandmarkDetector:
    """`detector(rgb, index)` → (68, 2) float landmarks of the most confident face, or None. Frames come in order
    (`index` is the frame's position in the stream; tracking and smoothing carry state from one to the next)."""

    hits = 0  # frames whose landmarks were read rather than computed (a cache counts them; this never reads)

    def __init__(self, detect_size: int = 480, upsample: int = 0, smooth: bool = True, detect_every: int = 1):
        if int(detect_every) < 1:
            raise LipsyncInputError("face.detector.detect_every", f"must be at least 1, got {detect_every}")
        self.detect_size = int(detect_size)
        self.upsample = int(upsample)
        self.smooth = smooth
        self.detect_every = int(detect_every)
        self._dlib = None
        self.prev: np.ndarray | None = None  # the previous frame's landmarks (tracking window, smoothing)
        self._track: _Track | None = None
        self._count = 0  # frames seen (the index when the caller gives none)
        self.detected = 0  # frames that ran the HOG detector (tracking's cost shows in how few they are)

    def close(self) -> None:
        pass  # nothing to flush (the landmark cache, which wraps a detector, writes its file here)

    def _models(self):
        if self._dlib is None:
            import dlib

            predictor = os.path.join(_models_dir(), "shape_predictor_68_face_landmarks.dat")
            self._dlib = dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor)
        return self._dlib

    def _detect(self, grey: np.ndarray, scale: float, upsample: int, offset=(0, 0)):
        if scale != 1.0:
            h, w = grey.shape[:2]
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)
        dlib, detector, _ = self._models()
        boxes, scores, _ = detector.run(grey, upsample, 0.0)
        if not boxes:
            return None
        b = boxes[int(np.argmax(scores))]
        ox, oy = offset
        return dlib.rectangle(int(b.left() / scale) + ox, int(b.top() / scale) + oy,
                              int(b.right() / scale) + ox, int(b.bottom() / scale) + oy)

    def detect_box(self, rgb: np.ndarray):
        """Most confident face box in frame pixels.

        With a face in the previous frame, search a window three face-widths wide around it, scaled so the face
        is ~_TRACK_FACE_PX wide (HOG finds faces from ~80 px); otherwise the whole frame at `detect_size`, then
        once more with the detector's 2× upsampling for small faces.
        """
        h, w = rgb.shape[:2]
        if self.prev is not None:
            x0, y0 = self.prev.min(0)
            x1, y1 = self.prev.max(0)
            size = max(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            bx0, by0 = int(max(0, cx - 1.5 * size)), int(max(0, cy - 1.5 * size))
            bx1, by1 = int(min(w, cx + 1.5 * size)), int(min(h, cy + 1.5 * size))
            if bx1 - bx0 > 16 and by1 - by0 > 16:
                window = cv2.cvtColor(rgb[by0:by1, bx0:bx1], cv2.COLOR_RGB2GRAY)  # grey of the window only
                box = self._detect(window, min(2.0, _TRACK_FACE_PX / size), 0, (bx0, by0))
                if box is not None:
                    return box
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.detect_size / max(h, w))
        return self._detect(grey, scale, self.upsample) or self._detect(grey, scale, self.upsample + 1)

    def predict(self, rgb: np.ndarray, box) -> np.ndarray:
        """The 68 points for a face box, from a crop one box-side around it (clamped to the frame): the predictor's
        pixel reads stay near the box, and outside the crop is outside the frame, so the points are the whole
        frame's (tested)."""
        dlib, _, predictor = self._models()
        h, w = rgb.shape[:2]
        side = max(box.width(), box.height())
        x0, y0 = max(0, box.left() - side), max(0, box.top() - side)
        x1, y1 = min(w, box.right() + side + 1), min(h, box.bottom() + side + 1)
        if x1 <= x0 or y1 <= y0:  # a box wholly outside the frame: nothing to crop
            x0, y0, x1, y1 = 0, 0, w, h
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        shape = predictor(crop, dlib.rectangle(box.left() - x0, box.top() - y0, box.right() - x0, box.bottom() - y0))
        return np.array([(p.x + x0, p.y + y0) for p in shape.parts()], dtype=np.float64)

    def _tracked_box(self, rgb: np.ndarray, track: _Track):
        """The box the detector would give for the previous landmarks, or None when it has left the frame."""
        centre, width = _extent(track.raw)
        dx, dy, side = track.box
        cx, cy, half = centre[0] + dx * width, centre[1] + dy * width, side * width / 2
        h, w = rgb.shape[:2]
        inside = max(0.0, min(w, cx + half) - max(0, cx - half)) * max(0.0, min(h, cy + half) - max(0, cy - half))
        if inside < _IN_FRAME * (2 * half) ** 2:
            return None
        dlib = self._models()[0]
        return dlib.rectangle(int(round(cx - half)), int(round(cy - half)), int(round(cx + half)),
                              int(round(cy + half)))

    @staticmethod
    def _patch(rgb: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """The grey face under the landmarks' bounding square, `_PATCH`² px (area-averaged)."""
        centre, width = _extent(pts)
        h, w = rgb.shape[:2]
        x0, y0 = int(max(0, centre[0] - width / 2)), int(max(0, centre[1] - width / 2))
        x1, y1 = int(min(w, centre[0] + width / 2)) + 1, int(min(h, centre[1] + width / 2)) + 1
        if x1 - x0 < 2 or y1 - y0 < 2:  # landmarks off the frame: a flat patch, which correlates with nothing
            return np.zeros((_PATCH, _PATCH), np.float32)
        grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
        return cv2.resize(grey, (_PATCH, _PATCH), interpolation=cv2.INTER_AREA).astype(np.float32)

    def _track_frame(self, rgb: np.ndarray, track: _Track) -> np.ndarray | None:
        """Landmarks from the tracked box, or None on tracking loss."""
        box = self._tracked_box(rgb, track)
        if box is None:
            return None
        pts = self.predict(rgb, box)
        centre, width = _extent(pts)
        before, _ = _extent(track.raw)
        if not 1 / _SCALE_JUMP <= width / track.width <= _SCALE_JUMP:
            return None
        if np.hypot(*(centre - before)) > _CENTRE_JUMP * track.width:
            return None
        # zero-mean normalised cross-correlation of two same-size patches (a single number)
        if cv2.matchTemplate(self._patch(rgb, pts), track.patch, cv2.TM_CCOEFF_NORMED)[0, 0] < _MIN_NCC:
            return None
        return pts

    def __call__(self, rgb: np.ndarray, index: int | None = None) -> np.ndarray | None:
        index = self._count if index is None else index
        self._count = index + 1
        track = self._track if self._track is not None and self._track.prev is self.prev else None
        pts = None
        if track is not None and self.detect_every > 1 and index % self.detect_every:
            pts = self._track_frame(rgb, track)
        tracked = pts is not None
        if not tracked:
            self.detected += 1
            box = self.detect_box(rgb)
            if box is None:
                self.prev = self._track = None
                return None
            pts = self.predict(rgb, box)
        raw = pts
        if self.smooth and self.prev is not None:
            pts = laplacian_smooth(self.prev, pts)
        self.prev = pts
        if tracked:
            track.raw, track.prev = raw, pts
        elif self.detect_every > 1:  # a detection: the box relation, width and appearance to track against
            self._track = _Track(raw, _box_relation(box, raw), _extent(raw)[1], self._patch(rgb, raw), pts)
        return pts
