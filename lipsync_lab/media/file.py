"""Media files as a source (PyAV, which bundles FFmpeg): any size, orientation and frame rate, conformed to the
pipeline's clock — 25-fps RGB frames (nearest-frame resampling of 24/30-fps input, display rotation applied) and
16 kHz mono audio. The driving audio is cut or zero-padded to the video's length: the output video keeps every input
frame and its audio track lasts exactly as long as the frames.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Iterator

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.media.source import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)


def _open(path: str, what: str) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise LipsyncInputError(path, f"{what} file not found")
    if os.path.isdir(path):
        raise LipsyncInputError(path, f"is a folder, expected a {what} file")
    try:
        return av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise LipsyncInputError(path, f"cannot read as media (truncated or not a {what} file): {e}") from None


def load_audio(path: str, n_samples: int | None = None) -> np.ndarray:
    """Decode the first audio track of any file to 16 kHz mono float32 (resampled and down-mixed by FFmpeg)."""
    with _open(path, "audio") as container:
        if not container.streams.audio:
            raise LipsyncInputError(path, "has no audio track")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        parts = []
        try:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as e:
            raise LipsyncInputError(path, f"audio is truncated or corrupt: {e}") from None
    audio = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    if len(audio) == 0:
        raise LipsyncInputError(path, "audio track is empty")
    return audio


def fit_audio(audio: np.ndarray, n_frames: int, name: str) -> np.ndarray:
    """Cut or zero-pad audio to exactly n_frames * 640 samples, saying so when the lengths really differ."""
    want = n_frames * SAMPLES_PER_FRAME
    if abs(len(audio) - want) > SAMPLES_PER_FRAME:
        verb = "padded with silence" if len(audio) < want else "cut"
        log.info("%s: audio (%.2f s) %s to the video's %d frames (%.2f s)", name, len(audio) / SAMPLE_RATE,
                 verb, n_frames, want / SAMPLE_RATE)
    out = np.zeros(want, np.float32)
    out[: min(want, len(audio))] = audio[:want]
    return out


def resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the shorter side at `short_side`, the aspect ratio kept, both sides even (H.264 4:2:0);
    the input size when `short_side` is None."""
    if short_side is None:
        return width, height
    scale = int(short_side) / min(width, height)
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


class FileSource:
    """A video file (any size/orientation/frame rate) plus driving audio (a file, or the video's own track).

    `short_side` (resolution sweeps): every frame resized so its shorter side is that many pixels (INTER_AREA when
    shrinking, INTER_CUBIC when enlarging), the aspect ratio kept and both sides even; width/height report it.

    `convert` — how decoded frames (YUV) become RGB at the output size:
    - `cv2`: FFmpeg converts each frame to RGB at its decoded size through a scaler set up for that frame alone
      (PyAV's `to_ndarray`), then OpenCV resizes the RGB frame;
    - `swscale`: one FFmpeg scaler for the whole stream converts and resizes in one pass (area when shrinking,
      bicubic when enlarging). At the decoded size it gives `cv2`'s pixels without setting a scaler up per frame
      (~1 ms at 1080×1920, more than the conversion itself); resized, it spares OpenCV's resize of the full-size RGB
      frame (~4 ms from 1080×1920 to 720p) and differs from it by ~2 grey levels on average (another area filter).
    Decoding itself (HEVC 1080×1920 on 2 cores: ~3–5 ms a frame) is the floor of either."""

    def __init__(self, video: str, audio: str | None = None, max_frames: int | None = None,
                 short_side: int | None = None, convert: str = "cv2"):
        video = os.fspath(video)
        self.path = video
        self.name = os.path.basename(video)
        if short_side is not None and int(short_side) < 2:
            raise LipsyncInputError("source.short_side", f"must be at least 2 pixels, got {short_side}")
        if convert not in ("cv2", "swscale"):
            raise LipsyncInputError("source.convert", f"cv2 | swscale, got {convert!r}")
        self.short_side = None if short_side is None else int(short_side)
        self.convert = convert
        with _open(video, "video") as container:
            if not container.streams.video:
                raise LipsyncInputError(video, "has no video stream")
            stream = container.streams.video[0]
            self.src_fps = float(stream.average_rate or stream.guessed_rate or FPS)
            duration = self._duration(container, stream)
            has_audio = bool(container.streams.audio)
            try:
                first = next(container.decode(video=0))
            except (StopIteration, av.error.FFmpegError):
                raise LipsyncInputError(video, "video stream has no decodable frame (truncated or corrupt)") from None
            rgb = self._to_rgb(first)
            self.src_height, self.src_width = rgb.shape[:2]  # as decoded (display rotation applied)
            self.width, self.height = resized_size(self.src_width, self.src_height, self.short_side)
            if stream.frames and abs(self.src_fps - FPS) < 1e-3:
                expected = int(stream.frames)  # the container's own count, exact at 25 fps
            else:
                expected = int(round(duration * FPS))
        self.expected_frames = max(expected, 1)
        self.n_frames = min(self.expected_frames, max_frames) if max_frames else self.expected_frames
        if audio is None and not has_audio:
            raise LipsyncInputError(video, "has no audio track and no audio was given (set source.audio=...)")
        raw = load_audio(audio if audio is not None else video)
        self.audio = fit_audio(raw, self.n_frames, self.name)

    @staticmethod
    def _duration(container, stream) -> float:
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
        return float(stream.frames or 0) / float(stream.average_rate or FPS)

    @staticmethod
    def _rotation(frame: av.VideoFrame) -> int:
        """Quarter turns (counter-clockwise) that display the frame upright."""
        return int(round(getattr(frame, "rotation", 0) or 0)) // 90 % 4

    @classmethod
    def _to_rgb(cls, frame: av.VideoFrame) -> np.ndarray:
        return cls._rotate(frame.to_ndarray(format="rgb24"), cls._rotation(frame))

    @staticmethod
    def _rotate(rgb: np.ndarray, rotation: int) -> np.ndarray:
        # the display matrix's angle is counter-clockwise; FFmpeg's autorotate undoes it the same way
        return np.ascontiguousarray(np.rot90(rgb, rotation)) if rotation else rgb

    def _scaled_rgb(self, scaler: VideoReformatter, frame: av.VideoFrame) -> np.ndarray:
        """`convert=swscale`: RGB at the output size straight from the decoded frame, by the stream's one scaler."""
        rotation = self._rotation(frame)
        width, height = (self.height, self.width) if rotation % 2 else (self.width, self.height)  # before turning
        if (width, height) == (frame.width, frame.height):
            interpolation = None  # PyAV's default, as `to_ndarray`'s (it filters the chroma planes' upsampling)
        else:
            interpolation = "AREA" if width * height < frame.width * frame.height else "BICUBIC"
        rgb = scaler.reformat(frame, width, height, "rgb24", interpolation=interpolation)
        return self._rotate(rgb.to_ndarray(), rotation)

    def _resize(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        if (w, h) == (self.width, self.height):
            return rgb
        shrink = self.width * self.height < w * h
        return cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)

    def content_key(self) -> str:
        """SHA-256 of the video file's bytes: the same clip under another name hits, another clip never does. Frames
        resized by `short_side` are other pixels (landmarks in other coordinates): their size is part of the key."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        resized = (self.width, self.height) != (self.src_width, self.src_height)
        return "sha256-" + digest.hexdigest() + (f"-{self.width}x{self.height}" if resized else "")

    def frames(self) -> Iterator[np.ndarray]:
        """Frames conformed to 25 fps by nearest-timestamp selection, exactly n_frames of them. A decoded frame is
        converted when it is first emitted: one that the conforming skips (30-fps input) costs no conversion."""
        emitted = 0
        prev = prev_rgb = None  # the last decoded frame, and its RGB once emitted
        prev_t = 0.0
        t0 = None
        scaler = VideoReformatter() if self.convert == "swscale" else None

        def rgb(frame: av.VideoFrame) -> np.ndarray:
            return self._scaled_rgb(scaler, frame) if scaler else self._resize(self._to_rgb(frame))

        with av.open(self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame and slice threads, one per core
            try:
                for frame in container.decode(stream):
                    t = float(frame.time) if frame.time is not None else emitted / self.src_fps
                    t0 = t if t0 is None else t0
                    t -= t0
                    if prev is not None:
                        midpoint = 0.5 * (prev_t + t)
                        while emitted < self.n_frames and emitted / FPS <= midpoint:
                            prev_rgb = rgb(prev) if prev_rgb is None else prev_rgb
                            yield prev_rgb
                            emitted += 1
                    if emitted >= self.n_frames:
                        return
                    prev, prev_rgb, prev_t = frame, None, t
            except av.error.FFmpegError as e:
                raise LipsyncInputError(self.path, f"video is truncated or corrupt after {emitted} frames: {e}") \
                    from None
        # the last decoded frame covers the rest of its display time; more than a frame missing is truncation
        while prev is not None and emitted < self.n_frames and emitted / FPS < prev_t + 1.5 / self.src_fps:
            prev_rgb = rgb(prev) if prev_rgb is None else prev_rgb
            yield prev_rgb
            emitted += 1
        if emitted < self.n_frames:
            raise LipsyncInputError(self.path, f"video is truncated: decoded {emitted} of {self.n_frames} frames")
