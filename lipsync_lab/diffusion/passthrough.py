"""`model=passthrough`: a diffusion stage with no model — the aligned faces come back as they went in.

It exists to measure the stream around the model (reading, landmarks, audio, paste-back, encoding, the executor)
with a model cost near zero: "does the CPU side keep up with real time?" (issue #9). Its output is the input, so
its runs say nothing about lip-sync quality; the variant name says `model=passthrough`.
"""

from __future__ import annotations

import numpy as np
import torch

from lipsync_lab.face.mask import mouth_mask
from lipsync_lab.timing import BatchTimer


class PassthroughDiffusion:
    def __init__(self, resolution: int, device="cpu", mask_path: str | None = None):
        self.resolution = int(resolution)
        self.device = torch.device(device)
        # what the real stage would regenerate (the run's crop recorder stores it beside the crops)
        self.mask = torch.as_tensor(mouth_mask(self.resolution, mask_path))[None, None]
        self.compile_report = None  # nothing optimised or compiled

    def regenerated_region(self) -> np.ndarray:
        """(res, res) bool: where the real stage would paint (the mouth), for the crop recorder."""
        return (self.mask[0, 0] == 0).numpy()

    def __call__(self, faces: np.ndarray | torch.Tensor, audio: torch.Tensor, timer: BatchTimer):
        with timer.stage("decode"):  # the one sub-stage with work: hand the crops back as the decoded output
            out = faces.clone() if torch.is_tensor(faces) else np.array(faces, copy=True)
        return out

    def warm_up(self) -> float:
        return 0.0
