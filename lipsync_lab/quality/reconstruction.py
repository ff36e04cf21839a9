"""Self-reconstruction metrics: a clip driven by its own audio has its original frames as ground truth.

Measured in crop space — each generated face crop against the aligned original crop it was made from (both in
`crops.npz`, lossless), over the region the model regenerates (the mouth), as drift is measured — so the
paste-back's resampling and the video encoder stay out of it. PSNR and the mean |Δ| are over the region's pixels;
SSIM is kornia's (11-px Gaussian window, on the whole crop so the window sees real neighbours) averaged over the
region's pixels and channels.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def self_driven(config: dict) -> str | None:
    """None when the run's output has ground truth (a file source played with its own audio track), else why not."""
    source = config.get("source") or {}
    if "video" not in source:
        return "the demo's frames are a still photograph moved, not driven by its speech: no ground truth " \
               "(use source=file with the clip's own audio)"
    if source.get("audio"):
        return "driven by another audio track (source.audio): the original frames are not ground truth"
    return None


def reconstruction(generated: np.ndarray, original: np.ndarray, region: np.ndarray) -> dict:
    """generated, original: (n, res, res, 3) uint8; region: (res, res), nonzero where the model paints →
    psnr_db (inf when equal), ssim, mean_abs (grey levels), frames."""
    import kornia

    mask = np.asarray(region).astype(bool)
    a = torch.from_numpy(np.asarray(generated)).permute(0, 3, 1, 2).double()
    b = torch.from_numpy(np.asarray(original)).permute(0, 3, 1, 2).double()
    diff = (a - b)[:, :, torch.from_numpy(mask)]
    mse = float((diff ** 2).mean())
    ssim_map = kornia.metrics.ssim(a, b, window_size=11, max_val=255.0)
    return dict(frames=int(len(a)), psnr_db=math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse),
                ssim=float(ssim_map[:, :, torch.from_numpy(mask)].mean()), mean_abs=float(diff.abs().mean()))
