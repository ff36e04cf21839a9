"""`source.short_side`: the file source resized for resolution sweeps (aspect kept, even sides)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import SYNTHETIC_SIZE
from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.media.file import FileSource, resized_size


def first_frames(source, n=2):
    frames = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == n:
            break
    return frames


def test_short_side_720_gives_720x1280_frames(demo_video, demo_audio):
    source = FileSource(str(demo_video), str(demo_audio), max_frames=2, short_side=720)
    assert (source.width, source.height) == (720, 1280)
    frames = first_frames(source)
    assert [f.shape for f in frames] == [(1280, 720, 3)] * 2 and frames[0].dtype == np.uint8
    # the clip's own frame, shrunk with INTER_AREA
    native = first_frames(FileSource(str(demo_video), str(demo_audio), max_frames=1))[0]
    assert native.shape == (1920, 1080, 3)
    assert np.array_equal(frames[0], cv2.resize(native, (720, 1280), interpolation=cv2.INTER_AREA))


def test_shrinking_the_synthetic_clip_is_opencvs_area_resize(synthetic_clip):
    source = FileSource(str(synthetic_clip), max_frames=2, short_side=256)  # its own audio track
    assert (source.width, source.height) == (256, 256)
    frames = first_frames(source)
    assert [f.shape for f in frames] == [(256, 256, 3)] * 2 and frames[0].dtype == np.uint8
    native = first_frames(FileSource(str(synthetic_clip), max_frames=1))[0]
    assert native.shape == (SYNTHETIC_SIZE, SYNTHETIC_SIZE, 3)
    assert np.array_equal(frames[0], cv2.resize(native, (256, 256), interpolation=cv2.INTER_AREA))


def test_no_short_side_keeps_the_clip_size(demo_video, demo_audio):
    source = FileSource(str(demo_video), str(demo_audio), max_frames=1)
    assert (source.width, source.height) == (1080, 1920)
    assert first_frames(source, 1)[0].shape == (1920, 1080, 3)


def test_enlarging_a_small_clip(partial_face_clip):
    source = FileSource(str(partial_face_clip), max_frames=2, short_side=300)
    assert (source.width, source.height) == (300, 300)
    assert all(f.shape == (300, 300, 3) for f in first_frames(source))


def test_sizes_are_even_and_keep_the_aspect_ratio():
    assert resized_size(1080, 1920, 720) == (720, 1280)
    assert resized_size(1920, 1080, 720) == (1280, 720)
    assert resized_size(1080, 1920, None) == (1080, 1920)
    w, h = resized_size(1000, 1333, 361)  # odd target: both sides rounded to even numbers
    assert w % 2 == 0 and h % 2 == 0 and abs(w - 361) <= 1 and abs(h / w - 1.333) < 0.01


def test_resized_frames_get_their_own_landmark_cache_key(demo_video, demo_audio):
    """Landmarks found on 720-px frames are not those of the clip's own 1080-px frames: another cache file."""
    native = FileSource(str(demo_video), str(demo_audio), max_frames=1)
    same = FileSource(str(demo_video), str(demo_audio), max_frames=1, short_side=1080)  # no resize: same key
    small = FileSource(str(demo_video), str(demo_audio), max_frames=1, short_side=720)
    assert same.content_key() == native.content_key() != small.content_key()


def test_the_synthetic_clip_resized_gets_its_own_landmark_cache_key(synthetic_clip):
    native = FileSource(str(synthetic_clip), max_frames=1)
    same = FileSource(str(synthetic_clip), max_frames=1, short_side=SYNTHETIC_SIZE)  # no resize: same key
    small = FileSource(str(synthetic_clip), max_frames=1, short_side=256)
    assert same.content_key() == native.content_key() != small.content_key()


@pytest.mark.parametrize("clip", ["demo_video", "synthetic_clip"])
def test_a_nonsense_short_side_is_an_input_error(request, clip):
    with pytest.raises(LipsyncInputError, match="source.short_side"):
        FileSource(str(request.getfixturevalue(clip)), max_frames=1, short_side=0)
