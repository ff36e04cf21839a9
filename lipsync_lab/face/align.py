"""Similarity alignment of a face to LatentSync's template (reference §2.2) and the aligned crop.

Upstream warps to a 210×280 crop and then resizes it to 256² (two resamplings, and two more on the way back).
Here the resize is folded into the affine matrix, so one warp makes the res×res crop and one inverse warp pastes
it back; the geometry is identical (same template, same anchors), with fewer resamplings.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from lipsync_lab.face.common import GREY, INTERPOLATION, per_face

# anchors (left brow, right brow, nose) in the 256-px template, and the crop they sit in (reference §2.2)
_TEMPLATE_256 = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]]) * 2.8
_CROP_W_256, _CROP_H_256 = int(75 * 2.8), int(100 * 2.8)  # 210 × 280


def anchors(landmarks68: np.ndarray) -> np.ndarray:
    """Three anchors: mean of each brow (points 17–21, 22–26) and of the nose (27–35)."""
    return np.stack([landmarks68[17:22].mean(0), landmarks68[22:27].mean(0), landmarks68[27:36].mean(0)])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2×3 similarity mapping src points onto dst, LatentSync's `transformation_from_points`.

    Written out because its scale is the ratio of the point sets' global standard deviations (orthogonal
    Procrustes on normalised points), which is not the least-squares (Umeyama) scale that library estimators use.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    c1, c2 = src.mean(0), dst.mean(0)
    p1, p2 = src - c1, dst - c2
    s1, s2 = p1.std(), p2.std()
    u, _, vt = np.linalg.svd((p1 / s1).T @ (p2 / s2))
    r = (u @ vt).T
    if np.linalg.det(r) < 0:  # no reflections (the fork lacks this check; upstream HEAD added it)
        u[:, -1] *= -1
        r = (u @ vt).T
    sr = (s2 / s1) * r
    return np.hstack([sr, (c2 - sr @ c1)[:, None]])


def template(resolution: int = 256) -> np.ndarray:
    return _TEMPLATE_256 * (resolution / 256)


def nose_residual(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """LatentSync's smoothing bias before its average: the nose anchor's offset between the two point sets, each
    centred and divided by its standard deviation (dst − src), in those normalised units — upstream adds it to the
    translation in template pixels as it is, so it is a sub-pixel nudge."""
    def normalised(points):
        centred = np.asarray(points, np.float64) - np.mean(points, axis=0)
        return centred / centred.std()

    return normalised(dst)[2] - normalised(src)[2]


def alignment_matrix(landmarks68: np.ndarray, resolution: int = 256, bias: np.ndarray | None = None) -> np.ndarray:
    """Frame → res×res crop: the template similarity (plus LatentSync's smoothing `bias` on its translation, in
    template pixels) followed by the 210×280 → res² resize."""
    m = similarity_transform(anchors(landmarks68), template(resolution))
    if bias is not None:
        m[:, 2] += bias
    sx = resolution / (_CROP_W_256 * resolution / 256)
    sy = resolution / (_CROP_H_256 * resolution / 256)
    return np.diag([sx, sy]) @ m


def warp_face(frame: np.ndarray, matrix: np.ndarray, resolution: int, interpolation: str = "lanczos") -> np.ndarray:
    return cv2.warpAffine(frame, matrix, (resolution, resolution), flags=INTERPOLATION[interpolation],
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(GREY, GREY, GREY))


def warp_faces_cv2(frames: list[np.ndarray], matrices: list[np.ndarray], resolution: int, *, threads: int = 2,
                   interpolation: str = "lanczos") -> np.ndarray:
    """The `align=cv2` option: each face's crop by one warp (Lanczos: upstream's) on the CPU, the faces spread over
    `threads` threads → (k, res, res, 3) uint8."""
    warp = functools.partial(warp_face, resolution=resolution, interpolation=interpolation)
    return np.stack(per_face(warp, frames, matrices, threads=threads))


@dataclass
class FaceBatch:
    """The faces of one batch: which frames have one, their frame → crop matrices and landmarks, and the aligned
    crops (k, res, res, 3) uint8 — a host array, or a device tensor when the `align` option runs on the device."""

    indices: list[int]              # positions in the batch of the frames with a face
    matrices: list[np.ndarray]      # 2×3, frame pixel → crop pixel
    landmarks: list[np.ndarray]     # (68, 2) in frame pixels
    crops: np.ndarray | torch.Tensor | None


class FaceAligner:
    """Frames → FaceBatch: landmarks from `detector(frame, index)` (a landmark detector, or the landmark cache around
    one), one similarity per face, then the crops of the whole batch from `warp(frames, matrices, resolution)` (an
    `align` option).

    `nose_bias` is LatentSync's `smooth=True` alignment (its inference default): the nose anchor's normalised
    residual, averaged over frames as 0.2·previous + 0.8·current, added to each similarity's translation. The average
    carries across frames of the stream (and over frames without a face), as upstream's does."""

    def __init__(self, detector, resolution: int = 256, warp=warp_faces_cv2, nose_bias: bool = True):
        self.detector = detector
        self.resolution = int(resolution)
        self.warp = warp
        self.nose_bias = bool(nose_bias)
        self._bias: np.ndarray | None = None

    def matrix(self, landmarks68: np.ndarray) -> np.ndarray:
        if not self.nose_bias:
            return alignment_matrix(landmarks68, self.resolution)
        residual = nose_residual(anchors(landmarks68), template(self.resolution))
        self._bias = residual if self._bias is None else 0.2 * self._bias + 0.8 * residual
        return alignment_matrix(landmarks68, self.resolution, self._bias)

    def __call__(self, frames: list[np.ndarray], indices: list[int]) -> FaceBatch:
        found = [(i, lmk) for i, (frame, index) in enumerate(zip(frames, indices))
                 if (lmk := self.detector(frame, index)) is not None]
        with_face = [i for i, _ in found]
        matrices = [self.matrix(lmk) for _, lmk in found]
        crops = self.warp([frames[i] for i in with_face], matrices, self.resolution) if found else None
        return FaceBatch(with_face, matrices, [lmk for _, lmk in found], crops)

    def close(self) -> None:
        self.detector.close()
