"""One batch through the stages: face → audio → diffusion → restore (design §2), one method per stage, each timed.

`pipeline(batch, timer)` runs the four in order (the sequential executor); the pipelined executor runs each stage
method on its own worker, overlapping neighbouring batches — the methods hand a batch on through its `Work` item
and keep their order-dependent state (landmark tracking and smoothing, the audio buffer, the diffusion noise) to
themselves, so one worker per stage gives the same output as calling them in order.

Frames where no face is found pass through unchanged; a batch with no face at all, or silent under voice-activity
gating (`vad=silero`), skips diffusion, and that is recorded (0 s rows, `face_frames`, `skipped`), not hidden.
When only some frames have a face, diffusion runs on those frames (padded to the batch size under
`static_shapes`, the padding kept out of the result).

A stage method passes its batch on (returns None), or — a stage that holds batches back — returns the batches it
releases now, in stream order, and the rest from `finish(key)` when the stream ends. The one such stage is the
diffusion stage under Stream Batch (`diffusion.stream_batch`: a clip leaves the denoiser `steps` batches after it
entered, so later batches wait behind it); executors run the following stages on whatever a stage releases.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from lipsync_lab.audio.features import StreamingAudioFeatures
from lipsync_lab.face.align import FaceAligner, FaceBatch
from lipsync_lab.media.source import SAMPLES_PER_FRAME, Batch
from lipsync_lab.quality.faces import landmark_boxes
from lipsync_lab.timing import DIFFUSION_SUBSTAGES, PROCESSING, BatchTimer


@dataclass
class BatchResult:
    frames: list[np.ndarray]        # the output frames, in order (what the sink writes)
    faces: np.ndarray | torch.Tensor | None  # (k, res, res, 3) uint8 generated face crops (drift comparisons)
    face_indices: list[int]         # the stream positions of those k frames
    originals: np.ndarray | torch.Tensor | None = None  # (k, res, res, 3) uint8: the aligned crops they were made from
    boxes: np.ndarray | None = None  # (k, 4) x1 y1 x2 y2: each of those faces' landmark extent (sync evaluation)


@dataclass
class Work:
    """One batch in flight: what each stage leaves for the next."""

    batch: Batch
    timer: BatchTimer
    faces: FaceBatch | None = None
    positions: list[int] = field(default_factory=list)  # stream positions of the frames diffusion regenerates
    features: torch.Tensor | None = None                 # (k, 50, 384) audio windows of those frames
    mouths: np.ndarray | torch.Tensor | None = None      # (k, res, res, 3) uint8 generated faces
    result: BatchResult | None = None


class LipsyncPipeline:
    def __init__(self, aligner: FaceAligner, audio: StreamingAudioFeatures, diffusion, restore, vad=None):
        self.aligner = aligner
        self.audio = audio
        self.diffusion = diffusion  # LipsyncDiffusion, or diffusion/passthrough.py's stand-in (diffusion=passthrough)
        # a `restore` option: (frames, faces (k, res, res, 3) uint8, matrices) → the frames with the faces pasted
        self.restore = restore
        self.vad = vad  # a `vad` option (audio/vad.py), or None: every batch is lip-synced
        self._held: deque[Work] = deque()  # Stream Batch: batches waiting, in stream order, for their clip
        self._done: set[int] = set()        # … and which of them are done (by id)

    def stages(self) -> list[tuple[str, callable]]:
        """(stage key, method) in data-flow order: what an executor runs for each batch — timing.STAGES' top-level
        stages between reading and writing, each the method `run_<key>`."""
        return [(key, getattr(self, f"run_{key}")) for key in PROCESSING]

    def __call__(self, batch: Batch, timer: BatchTimer) -> BatchResult:
        """One batch through every stage (a stage that holds batches back is flushed: a batch on its own)."""
        works = [Work(batch, timer)]
        for key, stage in self.stages():
            works = run_stage(stage, works) + self.finish(key)
        return works[0].result

    def finish(self, key: str) -> list[Work]:
        """At the stream's end: the batches stage `key` still holds, released in stream order."""
        return getattr(self, f"finish_{key}", lambda: [])()

    # 1. Facial preprocessing: landmarks → similarity → aligned crops of the frames with a face
    def run_face(self, work: Work) -> None:
        batch, timer = work.batch, work.timer
        read_before = self.aligner.detector.hits
        with timer.stage("face"):
            work.faces = self.aligner(batch.frames, batch.frame_indices)
        timer.face_frames = len(work.faces.indices)
        timer.landmarks_cached = self.aligner.detector.hits - read_before
        work.positions = [batch.start + i for i in work.faces.indices]
        if not work.positions:
            timer.skipped = "no_face"

    # 2. Audio feature preparation: the stream's audio so far → (k, 50, 384) windows for those frames; a batch
    #    without speech (vad) is not lip-synced, its frames pass through
    def run_audio(self, work: Work) -> None:
        batch, timer = work.batch, work.timer
        with timer.stage("audio"):
            self.audio.push(batch.new_audio, end=batch.audio_ended)
            if self.vad is not None:
                self.vad.push(batch.new_audio)
                span = batch.start * SAMPLES_PER_FRAME, (batch.start + len(batch.frames)) * SAMPLES_PER_FRAME
                if work.positions and not self.vad.has_speech(*span):
                    work.positions, timer.skipped = [], "silent"
            if work.positions:
                work.features = self.audio.features(work.positions)

    # 3. Diffusion inference (eight sub-stages, timed inside); the new faces stay where the model ran. Under Stream
    #    Batch the stage keeps clips in flight and hands back the ones that finished: batches wait in stream order
    #    behind the oldest clip still denoising
    def run_diffusion(self, work: Work) -> list[Work] | None:
        if not getattr(self.diffusion, "stream_batch", False):
            if work.positions:
                with work.timer.stage("diffusion"):
                    work.mouths = self.diffusion(work.faces.crops, work.features, work.timer)
                self._count_evals(work)
            else:
                self._skip_diffusion(work)
            return None
        self._held.append(work)
        if work.positions:
            with work.timer.stage("diffusion"):
                finished = self.diffusion.submit(work.faces.crops, work.features, work.timer, tag=work)
            self._count_evals(work)
            self._finished(finished)
        else:
            self._skip_diffusion(work)
            self._done.add(id(work))
        return self._release()

    def finish_diffusion(self) -> list[Work]:
        if not getattr(self.diffusion, "stream_batch", False):
            return []
        self._finished(self.diffusion.flush())
        return self._release()

    def _finished(self, finished: list) -> None:
        for w, mouths in finished:
            w.mouths = mouths
            self._done.add(id(w))

    def _release(self) -> list[Work]:
        out = []
        while self._held and id(self._held[0]) in self._done:
            out.append(self._held.popleft())
            self._done.discard(id(out[-1]))
        return out

    def _count_evals(self, work: Work) -> None:
        evals = self.diffusion.unet_evals  # what the batch's call cost the UNet, by callable kind
        work.timer.unet_frames = int(sum(evals.values()))
        work.timer.unet_frames_shallow = int(sum(v for k, v in evals.items() if k != "full"))

    @staticmethod
    def _skip_diffusion(work: Work) -> None:
        for key in ["diffusion", *DIFFUSION_SUBSTAGES]:
            work.timer.skip(key)

    # 4. Face postprocessing: paste each new face back into its frame (ROI only); the others pass through
    def run_restore(self, work: Work) -> None:
        batch, faces = work.batch, work.faces
        with work.timer.stage("restore"):
            out = list(batch.frames)
            if work.positions:
                pasted = self.restore([batch.frames[i] for i in faces.indices], work.mouths, faces.matrices)
                for i, frame in zip(faces.indices, pasted):
                    out[i] = frame
        if work.positions:  # what quality/ reads: each regenerated face's source crop and box, off the clock
            originals, boxes = faces.crops, landmark_boxes(faces.landmarks)
        else:
            originals = boxes = None
        work.result = BatchResult(out, work.mouths, work.positions, originals, boxes)

    def close(self) -> None:
        """After the stream (also a failed one): what the stages keep for later runs is written (landmark cache)."""
        self.aligner.close()


def run_stage(stage, works: list[Work]) -> list[Work]:
    """A stage method on each batch: the batches it passes on (itself when it returns None), in stream order."""
    out = []
    for work in works:
        released = stage(work)
        out += [work] if released is None else released
    return out
