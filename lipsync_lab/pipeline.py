"""One batch through the stages: face → audio → diffusion → restore (design §2), each timed.

Frames where no face is found pass through unchanged; a batch with no face at all skips diffusion, and that is
recorded (0 s rows and `face_frames` = 0), not hidden. When only some frames have a face, diffusion runs on those
frames (padded to the batch size under `static_shapes`, the padding kept out of the result).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lipsync_lab.audio.features import StreamingAudioFeatures
from lipsync_lab.diffusion.denoise import LipsyncDiffusion
from lipsync_lab.face.align import FaceAligner
from lipsync_lab.media.source import Batch
from lipsync_lab.timing import DIFFUSION_SUBSTAGES, BatchTimer


@dataclass
class BatchResult:
    frames: list[np.ndarray]        # the output frames, in order (what the sink writes)
    faces: np.ndarray | torch.Tensor | None  # (k, res, res, 3) uint8 generated face crops (drift comparisons)
    face_indices: list[int]         # the stream positions of those k frames


class LipsyncPipeline:
    def __init__(self, aligner: FaceAligner, audio: StreamingAudioFeatures, diffusion: LipsyncDiffusion, restore):
        self.aligner = aligner
        self.audio = audio
        self.diffusion = diffusion
        # a `restore` option: (frames, faces (k, res, res, 3) uint8, matrices) → the frames with the faces pasted
        self.restore = restore

    def __call__(self, batch: Batch, timer: BatchTimer) -> BatchResult:
        # 1. Facial preprocessing: landmarks → similarity → aligned crops of the frames with a face
        read_before = self.aligner.detector.hits
        with timer.stage("face"):
            faces = self.aligner(batch.frames, batch.frame_indices)
        timer.face_frames = len(faces.indices)
        timer.landmarks_cached = self.aligner.detector.hits - read_before
        positions = [batch.start + i for i in faces.indices]

        # 2. Audio feature preparation: the stream's audio so far → (k, 50, 384) windows for those frames
        with timer.stage("audio"):
            self.audio.push(batch.new_audio, end=batch.audio_ended)
            features = self.audio.features(positions) if positions else None

        # 3. Diffusion inference (eight sub-stages, timed inside); the new faces stay where the model ran
        mouths = None
        if positions:
            with timer.stage("diffusion"):
                mouths = self.diffusion(faces.crops, features, timer)
        else:
            for key in ["diffusion", *DIFFUSION_SUBSTAGES]:
                timer.skip(key)

        # 4. Face postprocessing: paste each new face back into its frame (ROI only); the others pass through
        with timer.stage("restore"):
            out = list(batch.frames)
            if positions:
                pasted = self.restore([batch.frames[i] for i in faces.indices], mouths, faces.matrices)
                for i, frame in zip(faces.indices, pasted):
                    out[i] = frame
        return BatchResult(out, mouths, positions)

    def close(self) -> None:
        """After the stream (also a failed one): what the stages keep for later runs is written (landmark cache)."""
        self.aligner.close()
