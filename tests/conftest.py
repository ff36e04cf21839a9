from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from lipsync_lab.paths import DATA_DIR, DATA_ENV

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(2)

# The synthetic clip (`synthetic_clip`): the embedded demo as a camera file, long and large enough for batches and
# resizing, small enough to encode in a second
SYNTHETIC_SECONDS, SYNTHETIC_SIZE = 2.0, 512


def shared_file(name: str) -> Path:
    """A file of LatentSync's demo (demo1_video.mp4, demo1_audio.wav, latentsync_mask.png) in the data folder; the
    test skips where it is absent — a clone without the data runs everything else (the file source included, on
    `synthetic_clip`)."""
    path = DATA_DIR / name
    if not path.is_file():
        pytest.skip(f"{name} not in {DATA_DIR}: set {DATA_ENV} to a folder holding LatentSync's demo clip to run "
                    "this test")
    return path


@pytest.fixture(scope="session")
def demo_video() -> Path:
    """LatentSync's demo clip: 1080×1920 portrait HEVC, 25 fps, 10 s, 44.1 kHz stereo AAC."""
    return shared_file("demo1_video.mp4")


@pytest.fixture(scope="session")
def demo_audio() -> Path:
    """LatentSync's demo speech: 9.6 s, a wav."""
    return shared_file("demo1_audio.wav")


@pytest.fixture(scope="session")
def real_frames(demo_video) -> list[np.ndarray]:
    """The first 12 frames of the real talking-head clip (RGB, 1080×1920 portrait)."""
    with av.open(str(demo_video)) as c:
        return [f.to_ndarray(format="rgb24") for _, f in zip(range(12), c.decode(video=0))]


@pytest.fixture(scope="session")
def synthetic_clip(tmp_path_factory) -> Path:
    """The embedded demo (the astronaut photo with head motion, synthetic speech) as a camera file: 2 s of
    512×512 H.264 at 25 fps with its speech as 44.1 kHz stereo AAC, so the file source decodes, resamples and
    down-mixes as with a real clip — needing no data folder."""
    from lipsync_lab.media.demo import demo_clip

    path = tmp_path_factory.mktemp("synthetic") / "demo_2s_512.mp4"
    return demo_clip(path, seconds=SYNTHETIC_SECONDS, size=SYNTHETIC_SIZE)


@pytest.fixture(scope="session")
def synthetic_speech(tmp_path_factory) -> Path:
    """The embedded demo's speech as a 16 kHz mono wav (3 s)."""
    from lipsync_lab.media.demo import demo_speech

    return demo_speech(tmp_path_factory.mktemp("synthetic") / "speech_3s.wav", seconds=3.0)


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
