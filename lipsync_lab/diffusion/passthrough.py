"""`diffusion=passthrough`: a diffusion stage with no model — the aligned faces come back as they went in.

It exists to measure the stream around the model (reading, landmarks, audio, paste-back, encoding, the executor)
with a model cost near zero: "does the CPU side keep up with real time?" (issue #9). Its output is the input, so
its runs say nothing about lip-sync quality; the variant name says `diffusion=passthrough`.
"""

from __future__ import annotations

import numpy as np
import torch

from lipsync_lab.timing import BatchTimer


class PassthroughDiffusion:
    uses_models = False  # build.py builds no UNet or VAE for it

    def __init__(self, mask: np.ndarray, device="cpu"):
        """mask: the mouth mask (res, res), 1 = keep, 0 = where the real stage would regenerate."""
        self.resolution = int(mask.shape[0])
        self.device = torch.device(device)
        self.mask = torch.as_tensor(mask)[None, None]
        self.compile_report = None  # nothing optimised or compiled
        self.unet_evals: dict = {}  # no model: no UNet evaluations

    def regenerated_region(self) -> np.ndarray:
        """(res, res) bool: where the real stage would paint (the mouth), for the crop recorder."""
        return (self.mask[0, 0] == 0).numpy()

    def flop_plan(self) -> dict[str, list[tuple]]:
        return self.plan()

    @staticmethod
    def plan(*settings) -> dict[str, list[tuple]]:
        """No model runs: nothing to count (said, not assumed: flops.py requires every stage's plan)."""
        return {}

    def __call__(self, faces: np.ndarray | torch.Tensor, audio: torch.Tensor, timer: BatchTimer):
        with timer.stage("decode"):  # the one sub-stage with work: hand the crops back as the decoded output
            out = faces.clone() if torch.is_tensor(faces) else np.array(faces, copy=True)
        return out

    def warm_up(self) -> float:
        return 0.0
