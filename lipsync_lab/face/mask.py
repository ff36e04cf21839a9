"""LatentSync's mouth mask, drawn procedurally (1 = keep, 0 = regenerate), or loaded from the official file.

The official `mask.png` (256², reference §2.4) is a bowl from row 95 down to row 242 spanning nearly the full width,
with a white notch for the nose above row 128. Here it is a superellipse's lower half plus that notch, with
parameters fitted to the official file (IoU 0.985 at 256², tested); coordinates are in units of 1/256 of the
crop so the same shape serves 512-px models.
"""

from __future__ import annotations

import cv2
import numpy as np

from lipsync_lab.errors import LipsyncInputError

_CX, _CY, _A, _B, _POWER = 128.18, 125.69, 119.32, 116.34, 2.2  # bowl (superellipse) centre and half-axes
_TOP = 95.0                      # first row of the regenerated region
_NOTCH_X0, _NOTCH_X1, _NOTCH_Y1 = 78.0, 178.0, 128.0  # nose notch (kept) above row 128


def mouth_mask(resolution: int = 256, path: str | None = None) -> np.ndarray:
    """(res, res) float32 mask, 1 = keep the original pixel, 0 = let the model regenerate it (the official file
    resized to another resolution has soft edges, as upstream's)."""
    if path:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise LipsyncInputError(path, "cannot read the mask image")
        mask = img.astype(np.float32) / 255.0
        if mask.shape != (resolution, resolution):
            # upstream resizes the 256² file (Lanczos) and uses the result as soft weights, edges included (v1.6's
            # 512-px crop): so do we, clipped to [0, 1] where Lanczos overshoots
            mask = np.clip(cv2.resize(mask, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4), 0.0, 1.0)
        return mask
    s = resolution / 256.0
    yy, xx = (np.mgrid[0:resolution, 0:resolution] + 0.5) / s  # pixel centres in 256-units
    bowl = np.abs((xx - _CX) / _A) ** _POWER + np.abs(np.maximum(yy - _CY, 0) / _B) ** _POWER <= 1
    regenerate = bowl & (yy >= _TOP)
    notch = (yy < _NOTCH_Y1) & (xx >= _NOTCH_X0) & (xx < _NOTCH_X1)
    return (~regenerate | notch).astype(np.float32)
