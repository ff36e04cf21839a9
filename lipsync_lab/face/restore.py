"""Paste an aligned face back into its frame (LatentSync's `restore_img`, reference §2.5), limited to the ROI.

All work happens inside the bounding box of the crop's inverse-warped corners (plus the feather margin); every
pixel outside it is the input frame's, untouched. Inside, the algorithm is upstream's: inverse warp of the face
and of an all-ones mask, 2×2 erosion, a centre erosion and Gaussian feather both sized by sqrt(mask area)/20,
then soft·face + (1−soft)·frame.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


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


def restore_cv2(frame: np.ndarray, face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Return a copy of `frame` with `face` (res×res, aligned by `matrix`) pasted back."""
    res = face.shape[0]
    x0, y0, x1, y1 = roi_box(matrix, res, frame.shape)
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    inv = cv2.invertAffineTransform(matrix)
    inv[:, 2] -= (x0, y0)  # warp straight into ROI coordinates
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(face, inv, size, flags=cv2.INTER_LANCZOS4).astype(np.float32)
    mask = cv2.warpAffine(np.ones((res, res), np.float32), inv, size)
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))
    edge = int(np.sqrt(mask.sum())) // 20
    if edge > 0:
        centre = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
        soft = cv2.GaussianBlur(centre, (2 * edge + 1, 2 * edge + 1), 0)
    else:
        soft = mask
    soft = soft[..., None]
    roi = out[y0:y1, x0:x1].astype(np.float32)
    blended = soft * (mask[..., None] * warped) + (1 - soft) * roi
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def restore_faces_cv2(frames: list[np.ndarray], faces, matrices: list[np.ndarray]) -> list[np.ndarray]:
    """The `restore=cv2` option: each generated face (k, res, res, 3) uint8 — host array or device tensor, brought
    to the host here — pasted back into its frame by `restore_cv2`."""
    faces = faces.cpu().numpy() if isinstance(faces, torch.Tensor) else faces
    return [restore_cv2(f, face, m) for f, face, m in zip(frames, faces, matrices)]
