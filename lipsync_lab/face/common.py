"""What the face options share (cv2 and kornia, align and restore): the crop's footprint in its frame, the grey the
crop is padded with, OpenCV's interpolation names, and the threads per-face OpenCV work runs on. Kept here so that no
option imports another option's module."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

GREY = 127  # what the aligned crop holds where it reaches past the frame (upstream's border value)
INTERPOLATION = {"lanczos": cv2.INTER_LANCZOS4, "cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}


def roi_box(matrix: np.ndarray, resolution: int, frame_shape: tuple[int, int], pad: int = 2):
    """Integer (x0, y0, x1, y1) in the frame that covers the crop's footprint, clamped to the frame."""
    inv = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [resolution, 0, 1], [0, resolution, 1], [resolution, resolution, 1]], float)
    pts = corners @ inv.T
    h, w = frame_shape[:2]
    x0 = max(0, int(np.floor(pts[:, 0].min())) - pad)
    y0 = max(0, int(np.floor(pts[:, 1].min())) - pad)
    x1 = min(w, int(np.ceil(pts[:, 0].max())) + pad)
    y1 = min(h, int(np.ceil(pts[:, 1].max())) + pad)
    return x0, y0, x1, y1


@functools.cache
def face_pool(threads: int) -> ThreadPoolExecutor:
    """Threads for per-face OpenCV work: its Lanczos warp runs on one core (it is not parallelised inside OpenCV,
    unlike its cubic one), and OpenCV and NumPy release the GIL, so the faces of a batch go to the cores."""
    return ThreadPoolExecutor(threads, thread_name_prefix="faces")


def per_face(fn, *items, threads: int = 1) -> list:
    """[fn(*args) for args in zip(*items)], on `threads` threads when more than one."""
    if threads <= 1 or len(items[0]) <= 1:
        return [fn(*args) for args in zip(*items)]
    return list(face_pool(threads).map(fn, *items))
