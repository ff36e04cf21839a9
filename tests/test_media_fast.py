"""The cheap conversions of the file source (`source.convert=swscale`) and the mp4 sink (`sink.convert=cv2`,
`sink.preset`, `sink.threads`): the same frames as the baseline conversions, to within a grey level or two."""

from __future__ import annotations

import av
import numpy as np
import pytest

from conftest import write_video
from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.media.file import FileSource
from lipsync_lab.media.mp4 import Mp4Sink
from lipsync_lab.media.source import SAMPLES_PER_FRAME


def frames(source, n=3):
    return [f for _, f in zip(range(n), source.frames())]


def mean_diff(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


def test_swscale_at_the_decoded_size_gives_the_same_pixels(demo_video, demo_audio):
    base = frames(FileSource(str(demo_video), str(demo_audio), max_frames=3))
    fast = frames(FileSource(str(demo_video), str(demo_audio), max_frames=3, convert="swscale"))
    assert all(np.array_equal(a, b) for a, b in zip(base, fast))


def test_swscale_on_the_synthetic_clip(synthetic_clip):
    """At the decoded size: cv2's very pixels; shrunk to 256²: within OpenCV's area resize's reach."""
    base = frames(FileSource(str(synthetic_clip), max_frames=3))
    fast = frames(FileSource(str(synthetic_clip), max_frames=3, convert="swscale"))
    assert len(base) == len(fast) == 3 and all(np.array_equal(a, b) for a, b in zip(base, fast))
    small = frames(FileSource(str(synthetic_clip), max_frames=2, short_side=256), 2)
    small_fast = frames(FileSource(str(synthetic_clip), max_frames=2, short_side=256, convert="swscale"), 2)
    assert [f.shape for f in small_fast] == [(256, 256, 3)] * 2
    assert all(mean_diff(a, b) < 3 for a, b in zip(small, small_fast))


def test_swscale_resizing_is_close_to_opencvs(demo_video, demo_audio, partial_face_clip):
    base = frames(FileSource(str(demo_video), str(demo_audio), max_frames=2, short_side=720), 2)
    fast = frames(FileSource(str(demo_video), str(demo_audio), max_frames=2, short_side=720, convert="swscale"), 2)
    assert [f.shape for f in fast] == [(1280, 720, 3)] * 2
    assert all(mean_diff(a, b) < 3 for a, b in zip(base, fast))  # another area filter: ~1.7 levels
    up = frames(FileSource(str(partial_face_clip), short_side=300, convert="swscale"))  # enlarging: bicubic
    up_base = frames(FileSource(str(partial_face_clip), short_side=300))
    assert all(f.shape == (300, 300, 3) for f in up) and all(mean_diff(a, b) < 3 for a, b in zip(up_base, up))


def test_swscale_resizes_before_turning_a_rotated_frame(tmp_path, monkeypatch):
    """A frame stored sideways is resized to the sideways size, then turned upright."""
    clip = write_video(tmp_path / "c.mp4", [np.tile(np.arange(0, 240, 2, dtype=np.uint8)[None, :, None],
                                                    (80, 1, 3))] * 2, audio=np.zeros(1280, np.float32))
    monkeypatch.setattr(FileSource, "_rotation", staticmethod(lambda frame: 1))
    base, fast = (frames(FileSource(str(clip), short_side=40, convert=c), 1)[0] for c in ("cv2", "swscale"))
    assert base.shape == fast.shape == (60, 40, 3) and mean_diff(base, fast) < 3


def test_swscale_conforms_30fps_like_the_baseline(tmp_path):
    level = [np.full((48, 64, 3), 4 * i + 8, np.uint8) for i in range(30)]
    clip = write_video(tmp_path / "30.mp4", level, fps=30, audio=np.zeros(16000, np.float32))
    base, fast = (list(FileSource(str(clip), convert=c).frames()) for c in ("cv2", "swscale"))
    assert len(base) == len(fast) == 25 and all(np.array_equal(a, b) for a, b in zip(base, fast))


def demo_pictures() -> list[np.ndarray]:
    """6 frames of the embedded demo at 272×272 (the photograph's colours, no data folder needed)."""
    from lipsync_lab.media.demo import DemoSource

    return list(DemoSource(seconds=0.24, size=272).frames())


@pytest.mark.parametrize("pictures", ["real", "demo"])
@pytest.mark.parametrize("preset,threads", [("veryfast", 0), ("ultrafast", 1)])
def test_cv2_conversion_in_the_sink_keeps_the_colours(tmp_path, request, pictures, preset, threads):
    if pictures == "real":
        pics = [f[::4, ::4].copy() for f in request.getfixturevalue("real_frames")[:6]]  # 270×480 of the real clip
    else:
        pics = demo_pictures()
    h, w = pics[0].shape[:2]
    decoded = {}
    for convert in ("swscale", "cv2"):
        path = tmp_path / f"{convert}.mp4"
        sink = Mp4Sink(str(path), w, h, preset=preset, threads=threads, convert=convert)
        sink.write(pics, np.zeros(len(pics) * SAMPLES_PER_FRAME, np.float32))
        sink.close()
        assert not (tmp_path / f"{convert}.mp4.partial.mp4").exists()
        with av.open(str(path)) as c:
            decoded[convert] = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded["cv2"]) == len(pics)
    for a, b, src in zip(decoded["swscale"], decoded["cv2"], pics):
        assert mean_diff(b, src) < 3 and mean_diff(a, b) < 2


def test_odd_sizes_still_go_through_ffmpeg_with_cv2(tmp_path):
    sink = Mp4Sink(str(tmp_path / "odd.mp4"), 81, 49, convert="cv2")
    sink.write([np.full((49, 81, 3), 100, np.uint8)] * 3, np.zeros(3 * SAMPLES_PER_FRAME, np.float32))
    sink.close()
    src = FileSource(str(tmp_path / "odd.mp4"))
    assert (src.width, src.height) == (81, 49)
    assert np.abs(next(iter(src.frames())).astype(int) - 100).max() <= 2


def test_unknown_conversions_are_input_errors(tmp_path, synthetic_clip):
    with pytest.raises(LipsyncInputError, match="sink.convert"):
        Mp4Sink(str(tmp_path / "o.mp4"), 64, 48, convert="numpy")
    with pytest.raises(LipsyncInputError, match="source.convert"):
        FileSource(str(synthetic_clip), max_frames=1, convert="numpy")  # a readable file: only the option is wrong
