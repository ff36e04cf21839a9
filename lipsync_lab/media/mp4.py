"""The `mp4` sink: H.264 + AAC with the driving audio muxed in (PyAV, no ffmpeg binary needed).

The mp4 is written to a temporary name and renamed on a clean close, so a failed run never leaves a file that
looks complete.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

from lipsync_lab.media.source import FPS, SAMPLE_RATE


class Mp4Sink:
    """Streams frames into H.264 (yuv420p; yuv444p for odd sizes, which 4:2:0 cannot hold) and audio into AAC."""

    def __init__(self, path: str, width: int, height: int, crf: int = 18, preset: str = "veryfast"):
        self.path = os.fspath(path)
        self._tmp = self.path + ".partial.mp4"
        self._container = av.open(self._tmp, mode="w")
        self._video = self._container.add_stream("libx264", rate=FPS)
        self._video.width, self._video.height = width, height
        self._video.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._video.options = {"crf": str(crf), "preset": preset}
        self._audio = self._container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        self._audio_pts = 0
        self._frames = 0

    def write(self, frames: list[np.ndarray], audio: np.ndarray) -> None:
        """Encode frames and the audio that plays with them (len(frames) * 640 samples)."""
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self._frames
            frame.time_base = Fraction(1, FPS)
            self._container.mux(self._video.encode(frame))
            self._frames += 1
        if len(audio):
            samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)
            aframe = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            aframe.sample_rate = SAMPLE_RATE
            aframe.pts = self._audio_pts
            aframe.time_base = Fraction(1, SAMPLE_RATE)
            self._audio_pts += samples.shape[1]
            self._container.mux(self._audio.encode(aframe))

    def close(self) -> None:
        self._container.mux(self._video.encode(None))
        self._container.mux(self._audio.encode(None))
        self._container.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        try:
            self._container.close()
        finally:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)
