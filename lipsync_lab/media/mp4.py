"""The `mp4` sink: H.264 + AAC with the driving audio muxed in (PyAV, no ffmpeg binary needed).

The mp4 is written to a temporary name and renamed on a clean close, so a failed run never leaves a file that
looks complete.

What a frame costs (1080×1920 on 2 cores, CPU time over x264's threads; scripts/bench_cpu_stages.py): x264's
preset most of all — with OpenCV's conversion veryfast ~24 ms, superfast ~16, ultrafast ~10.5 (at crf 18
ultrafast's file is ~4.5× veryfast's: no CABAC, no B-frames, simpler analysis) — and the RGB → YUV 4:2:0
conversion, which takes FFmpeg's scaler ~4–6 ms more than OpenCV's (`convert`). x264's frame threads spread the
encode over both cores.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import cv2
import numpy as np

from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.media.source import FPS, SAMPLE_RATE


class Mp4Sink:
    """Streams frames into H.264 (yuv420p; yuv444p for odd sizes, which 4:2:0 cannot hold) and audio into AAC.

    `preset`: x264's speed/size trade-off (ultrafast … veryslow). `threads`: x264's threads (0 = its own choice,
    1.5 per core). `convert`: who turns the RGB frames into 4:2:0 — `swscale` (FFmpeg's scaler inside the encoder)
    or `cv2` (OpenCV's RGB → I420, BT.601 limited range like FFmpeg's default: the same colours, ~4× cheaper);
    yuv444p (odd sizes) always goes through FFmpeg."""

    def __init__(self, path: str, width: int, height: int, crf: int = 18, preset: str = "veryfast",
                 threads: int = 0, convert: str = "swscale"):
        if convert not in ("swscale", "cv2"):
            raise LipsyncInputError("sink.convert", f"swscale | cv2, got {convert!r}")
        self.path = os.fspath(path)
        self._tmp = self.path + ".partial.mp4"
        self._container = av.open(self._tmp, mode="w")
        self._video = self._container.add_stream("libx264", rate=FPS)
        self._video.width, self._video.height = width, height
        self._video.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._video.options = {"crf": str(crf), "preset": preset, "threads": str(int(threads))}
        self._i420 = convert == "cv2" and self._video.pix_fmt == "yuv420p"
        self._audio = self._container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        self._audio_pts = 0
        self._frames = 0

    def write(self, frames: list[np.ndarray], audio: np.ndarray) -> None:
        """Encode frames and the audio that plays with them (len(frames) * 640 samples)."""
        for rgb in frames:
            if self._i420:
                frame = av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
            else:
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
