from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

torch.set_num_threads(2)


def shared_file(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests read the shared demo clip from ../shared/data")
    return path


@pytest.fixture(scope="session")
def demo_video() -> Path:
    return shared_file("demo1_video.mp4")


@pytest.fixture(scope="session")
def demo_audio() -> Path:
    return shared_file("demo1_audio.wav")


@pytest.fixture(scope="session")
def real_frames(demo_video) -> list[np.ndarray]:
    """The first 12 frames of the real talking-head clip (RGB, 1080×1920 portrait)."""
    with av.open(str(demo_video)) as c:
        return [f.to_ndarray(format="rgb24") for _, f in zip(range(12), c.decode(video=0))]


def write_video(path, frames, fps=25, audio=None, rate=16000, layout="mono"):
    """A small H.264 (+ optional AAC) file for tests."""
    from fractions import Fraction

    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.height, v.width = frames[0].shape[:2]
        v.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=rate, layout=layout) if audio is not None else None
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            c.mux(v.encode(vf))
        c.mux(v.encode(None))
        if a is not None:
            planes = np.ascontiguousarray(np.atleast_2d(audio).astype(np.float32))  # (channels, samples)
            af = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
            af.sample_rate, af.pts, af.time_base = rate, 0, Fraction(1, rate)
            c.mux(a.encode(af))
            c.mux(a.encode(None))
    return path


@pytest.fixture(scope="session")
def partial_face_clip(tmp_path_factory) -> Path:
    """10 frames of the embedded demo (a face dlib finds) with frames 5 and 6 blanked (no face), and its speech: in
    batches of 4, a full batch, a batch where only some frames have a face, and a short last batch."""
    from lipsync_lab.media.demo import DemoSource

    demo = DemoSource(seconds=0.4, size=256, seed=0)
    frames = list(demo.frames())
    for i in (5, 6):
        frames[i] = np.full_like(frames[i], 90)
    return write_video(tmp_path_factory.mktemp("clip") / "partial_face.mp4", frames, audio=demo.audio)
