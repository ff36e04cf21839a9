"""68-point iBUG landmarks with dlib (HOG detector + the 68-point shape predictor from face_recognition_models).

Detection runs on a downscaled grey copy (HOG cost grows with pixels; a 1080×1920 frame would take ~10× longer),
the shape predictor on the full-resolution frame. LatentSync's Laplacian smoothing damps small landmark motion
across frames (reference §2.3); its state persists across batches and resets when the face is lost.

dlib and its model files are loaded at the first frame that needs them, so a run whose landmarks all come from the
landmark cache (face/cache.py) works on a machine without them.
"""

from __future__ import annotations

import importlib.util
import os

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


class LandmarkDetector:
    """`detector(rgb, index)` → (68, 2) float landmarks of the most confident face, or None. Frames come in order
    (`index` is the frame's position in the stream; tracking and smoothing carry state from one to the next)."""

    hits = 0  # frames whose landmarks were read rather than computed (a cache counts them; this never reads)

    def __init__(self, detect_size: int = 480, upsample: int = 0, smooth: bool = True):
        self.detect_size = int(detect_size)
        self.upsample = int(upsample)
        self.smooth = smooth
        self._dlib = None
        self.prev: np.ndarray | None = None  # the previous frame's landmarks (tracking window, smoothing)

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
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        h, w = grey.shape
        if self.prev is not None:
            x0, y0 = self.prev.min(0)
            x1, y1 = self.prev.max(0)
            size = max(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            bx0, by0 = int(max(0, cx - 1.5 * size)), int(max(0, cy - 1.5 * size))
            bx1, by1 = int(min(w, cx + 1.5 * size)), int(min(h, cy + 1.5 * size))
            if bx1 - bx0 > 16 and by1 - by0 > 16:
                box = self._detect(grey[by0:by1, bx0:bx1], min(2.0, _TRACK_FACE_PX / size), 0, (bx0, by0))
                if box is not None:
                    return box
        scale = min(1.0, self.detect_size / max(h, w))
        return self._detect(grey, scale, self.upsample) or self._detect(grey, scale, self.upsample + 1)

    def __call__(self, rgb: np.ndarray, index: int | None = None) -> np.ndarray | None:
        box = self.detect_box(rgb)
        if box is None:
            self.prev = None
            return None
        shape = self._models()[2](rgb, box)
        pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        if self.smooth and self.prev is not None:
            pts = laplacian_smooth(self.prev, pts)
        self.prev = pts
        return pts
