"""`face.detector.detect_every`: landmarks tracked from the previous frame's, with the HOG detector every k frames
and on tracking loss — close to per-frame detection on a talking head, and no landmarks while the face is away."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.face.landmarks import LandmarkDetector

K = 10  # the fast option's value (conf/face/dlib.yaml)
SIZE = (540, 960)  # the demo clip at half size: its face is ~90 px wide, as large as HOG needs, and tests stay quick


@pytest.fixture(scope="module")
def clip(demo_video) -> list[np.ndarray]:
    """The first 48 frames of the real talking head at 540×960."""
    with av.open(str(demo_video)) as c:
        return [cv2.resize(f.to_ndarray(format="rgb24"), SIZE, interpolation=cv2.INTER_AREA)
                for _, f in zip(range(48), c.decode(video=0))]


def landmarks(frames, detect_every):
    detector = LandmarkDetector(detect_size=640, detect_every=detect_every)
    return [detector(frame, i) for i, frame in enumerate(frames)], detector


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean point distance in face widths."""
    return float(np.linalg.norm(a - b, axis=1).mean() / np.ptp(b[:, 0]))


def pan(frame: np.ndarray, dx: int) -> np.ndarray:
    """The frame moved dx px to the right (a camera panning away), grey where nothing was filmed."""
    out = np.full_like(frame, 127)
    out[:, dx:] = frame[:, :frame.shape[1] - dx]
    return out


def face_free(frame: np.ndarray) -> np.ndarray:
    """A cut to a shot without a face: the frame's lower half (hands, coat, chair) twice."""
    half = frame[frame.shape[0] // 2:]
    return np.concatenate([half, half])


def test_tracked_landmarks_stay_close_to_per_frame_detection(clip):
    detected, full = landmarks(clip, 1)
    tracked, fast = landmarks(clip, K)
    assert all(p is not None for p in detected) and all(p is not None for p in tracked)
    errors = [relative_error(t, d) for t, d in zip(tracked, detected)]
    # measured: mean 0.4 %, worst frame 0.7 % of the face width (~0.7 px at 1080×1920) — inside dlib's own jitter
    assert np.mean(errors) < 0.01 and max(errors) < 0.03
    assert fast.detected == len(clip) // K + (len(clip) % K > 0) and full.detected == len(clip)


def test_the_face_panning_out_and_back(clip):
    # 12 frames still, 8 panning out 40 px a frame, 8 out of shot, 8 panning back, 12 still
    shifts = [0] * 12 + [40 * i for i in range(1, 9)] + [320] * 8 + [40 * i for i in range(7, -1, -1)] + [0] * 12
    frames = [pan(f, dx) for f, dx in zip(clip, shifts)]
    tracked, _ = landmarks(frames, K)
    detected, _ = landmarks(frames, 1)
    for i, dx in enumerate(shifts):
        if dx >= 300:  # the face (x 256–348 at this size) is wholly out of the frame
            assert tracked[i] is None and detected[i] is None, i
        if dx == 0:
            assert tracked[i] is not None and detected[i] is not None, i
            assert relative_error(tracked[i], detected[i]) < 0.03, i


def test_a_cut_to_a_shot_without_face_loses_the_track_at_once(clip):
    """Frames 13–26 have no face. Its absence starts between two periodic detections, so the tracker itself has to
    notice (the predictor happily draws a face on anything); the face's return is picked up on its first frame."""
    away = range(13, 27)
    frames = [face_free(f) if i in away else f for i, f in enumerate(clip)]
    tracked, fast = landmarks(frames, K)
    detected, _ = landmarks(frames, 1)
    for i in range(len(frames)):
        if i in away:
            assert tracked[i] is None and detected[i] is None, i
        else:
            assert tracked[i] is not None and relative_error(tracked[i], detected[i]) < 0.03, i
    assert fast.detected < len(frames) - 10  # the face-free frames are searched; the rest mostly tracked


def test_the_predictor_on_a_crop_gives_the_whole_frame_points(clip):
    detector = LandmarkDetector(detect_size=640)
    box = detector.detect_box(clip[0])
    _, _, predictor = detector._models()
    whole = np.array([(p.x, p.y) for p in predictor(clip[0], box).parts()], np.float64)
    assert np.array_equal(detector.predict(clip[0], box), whole)


def test_a_resumed_tracker_starts_with_a_detection(clip):
    """The landmark cache resumes a detector by setting `prev`: tracking state from elsewhere is not trusted."""
    detector = LandmarkDetector(detect_size=640, detect_every=K)
    first = detector(clip[0], 0)
    detector(clip[1], 1)
    assert detector.detected == 1
    detector.prev = first
    detector(clip[2], 2)
    assert detector.detected == 2


def test_detect_every_below_one_is_an_input_error():
    with pytest.raises(LipsyncInputError):
        LandmarkDetector(detect_every=0)
