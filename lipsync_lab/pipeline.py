"""One batch through the stages: face → audio → diffusion → restore (design §2), each timed.

Frames where no face is found pass through unchanged; a batch with no face at all skips diffusion, and that is
recorded (0 s rows and `face_frames` = 0), not hidden. When only some frames have a face, diffusion runs on those
frames (padded to the batch size under `static_shapes`, the padding kept out of the result).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipsync_lab.audio.features import StreamingAudioFeatures
from lipsync_lab.diffusion.denoise import LipsyncDiffusion
from lipsync_lab.face.align import FaceAligner
from lipsync_lab.media.source import Batch
from lipsync_lab.timing import DIFFUSION_SUBSTAGES, BatchTimer


@dataclass
class BatchResult:
    frames: list[np.ndarray]        # the output frames, in order (what the sink writes)
    faces: np.ndarray | None        # (k, res, res, 3) generated face crops, lossless (drift comparisons)
    face_indices: list[int]         # the stream positions of those k frames


class LipsyncPipeline:
    def __init__(self, aligner: FaceAligner, audio: StreamingAudioFeatures, diffusion: LipsyncDiffusion, restore):
        self.aligner = aligner
        self.audio = audio
        self.diffusion = diffusion
        self.restore = restore  # a `restore` option: (frame, face, matrix) → frame with the face pasted back

    def __call__(self, batch: Batch, timer: BatchTimer) -> BatchResult:
        # 1. Facial preprocessing: landmarks → similarity → aligned crop (None = no face, pass through)
        read_before = self.aligner.detector.hits
        with timer.stage("face"):
            aligned = [self.aligner(frame, index) for frame, index in zip(batch.frames, batch.frame_indices)]
        with_face = [i for i, a in enumerate(aligned) if a is not None]
        timer.face_frames = len(with_face)
        timer.landmarks_cached = self.aligner.detector.hits - read_before

        # 2. Audio feature preparation: the stream's audio so far → (N, 50, 384) windows for this batch's frames
        with timer.stage("audio"):
            self.audio.push(batch.new_audio, end=batch.audio_ended)
            frames = [batch.start + i for i in with_face]
            features = self.audio.features(frames) if frames else None

        # 3. Diffusion inference (eight sub-stages, timed inside)
        mouths = None
        if with_face:
            with timer.stage("diffusion"):
                faces = np.stack([aligned[i].face for i in with_face])
                mouths = self.diffusion(faces, features, timer)
        else:
            for key in ["diffusion", *DIFFUSION_SUBSTAGES]:
                timer.skip(key)

        # 4. Face postprocessing: paste each new face back into its frame (ROI only)
        with timer.stage("restore"):
            out = list(batch.frames)
            for j, i in enumerate(with_face):
                out[i] = self.restore(batch.frames[i], mouths[j], aligned[i].matrix)
        return BatchResult(out, mouths, [batch.start + i for i in with_face])

    def close(self) -> None:
        """After the stream (also a failed one): what the stages keep for later runs is written (landmark cache)."""
        self.aligner.close()
