"""Face stage: alignment geometry, the mouth mask, and the align → restore round trip on a real frame (the clip's, and
the embedded demo's photograph)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import shared_file
from lipsync_lab.face.align import FaceAligner, alignment_matrix, anchors, similarity_transform
from lipsync_lab.face.landmarks import LandmarkDetector
from lipsync_lab.face.mask import mouth_mask
from lipsync_lab.face.common import roi_box
from lipsync_lab.face.restore import restore_cv2


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner(LandmarkDetector(), resolution=256)


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 500, (3, 2))
    angle, scale, shift = np.deg2rad(17.0), 0.63, np.array([12.0, -40.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-7)


@pytest.fixture(params=["real", "demo"])
def face_frame(request) -> np.ndarray:
    """A frame with a face: the real clip's first (1080×1920; skips without the data folder) or the embedded
    demo's (the astronaut photograph, 512²)."""
    if request.param == "real":
        return request.getfixturevalue("real_frames")[0]
    from lipsync_lab.media.demo import DemoSource

    return next(DemoSource(seconds=0.04, size=512).frames())


def align(aligner, frame):
    """One frame through the batch aligner: (crop, matrix, landmarks), or None without a face."""
    faces = aligner([frame], [0])
    return (faces.crops[0], faces.matrices[0], faces.landmarks[0]) if faces.indices else None


def test_real_face_lands_on_the_template(aligner, face_frame):
    a = align(aligner, face_frame)
    assert a is not None, "dlib found no face in the frame"
    face, matrix, landmarks = a
    assert face.shape == (256, 256, 3) and face.dtype == np.uint8
    # the three anchors map close to LatentSync's template, resized from the 210x280 crop to 256²
    mapped = np.c_[anchors(landmarks), np.ones(3)] @ matrix.T
    template = np.array([[17, 20], [58, 20], [37.5, 40]]) * 2.8 * [256 / 210, 256 / 280]
    assert np.abs(mapped - template).max() < 12.0  # a similarity fits 3 points only approximately


def test_align_restore_round_trip_on_real_frame(aligner, face_frame):
    frame = face_frame
    face, matrix, _ = align(aligner, frame)
    out = restore_cv2(frame, face, matrix)
    x0, y0, x1, y1 = roi_box(matrix, 256, frame.shape)
    assert 0 < x1 - x0 < frame.shape[1] / 2 and 0 < y1 - y0 < frame.shape[0] / 2  # ROI-limited
    outside = np.ones(frame.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], frame[outside]), "pixels outside the face's box changed"
    diff = np.abs(out[y0:y1, x0:x1].astype(int) - frame[y0:y1, x0:x1])
    # two Lanczos resamplings of the same pixels: stated tolerance, mean < 0.5 and 99.9th percentile <= 4 levels
    assert diff.mean() < 0.5 and np.percentile(diff, 99.9) <= 4, (diff.mean(), np.percentile(diff, 99.9))


def test_restore_pastes_a_new_face_inside_the_box(aligner, face_frame):
    frame = face_frame
    face, matrix, _ = align(aligner, frame)
    out = restore_cv2(frame, np.zeros_like(face), matrix)  # a black face must show up in the frame
    x0, y0, x1, y1 = roi_box(matrix, 256, frame.shape)
    centre = out[(y0 + y1) // 2 - 5:(y0 + y1) // 2 + 5, (x0 + x1) // 2 - 5:(x0 + x1) // 2 + 5]
    assert centre.max() == 0


def test_no_face_gives_none(aligner):
    blank = np.full((360, 640, 3), 90, np.uint8)
    assert align(aligner, blank) is None


def test_procedural_mask_matches_latentsync_png():
    official = cv2.imread(str(shared_file("latentsync_mask.png")), cv2.IMREAD_GRAYSCALE) > 127
    ours = mouth_mask(256) > 0.5
    regen_ours, regen_official = ~ours, ~official
    iou = (regen_ours & regen_official).sum() / (regen_ours | regen_official).sum()
    assert iou >= 0.98, iou


@pytest.mark.parametrize("mask", ["procedural 256", "procedural 512", "latentsync_mask.png"])
def test_mask_polarity_is_keep_one_regenerate_zero(mask):
    # one mask per case: the procedural ones need no data folder
    m = mouth_mask(256, str(shared_file(mask))) if mask.endswith(".png") else mouth_mask(int(mask.split()[1]))
    r = m.shape[0] / 256
    assert m[int(30 * r), int(128 * r)] == 1.0   # forehead: keep
    assert m[int(110 * r), int(128 * r)] == 1.0  # nose notch: keep
    assert m[int(200 * r), int(128 * r)] == 0.0  # mouth / chin: regenerate
    assert set(np.unique(m)) == {0.0, 1.0}


def test_alignment_matrix_scales_with_resolution(face_frame, aligner):
    lmk = align(aligner, face_frame)[2]
    np.testing.assert_allclose(alignment_matrix(lmk, 512), 2 * alignment_matrix(lmk, 256), rtol=1e-9)


def landmarks_with_anchors(brow_left, brow_right, nose) -> np.ndarray:
    """68 points whose three anchors (mean of 17–21, 22–26, 27–35) are the given points."""
    lmk = np.zeros((68, 2))
    lmk[17:22], lmk[22:27], lmk[27:36] = brow_left, brow_right, nose
    return lmk


def test_nose_bias_is_latentsyncs_smoothing_by_hand():
    """LatentSync aligns with smooth=True: bias = the nose anchor of the normalised template minus that of the
    normalised face (each set centred, divided by its standard deviation over all coordinates), averaged over
    frames as 0.2·previous + 0.8·current, added to the similarity's translation (template pixels, before the
    210×280 → 256² resize)."""
    # template (×2.8 cancels): centred [[-20.5, -6.667], [20.5, -6.667], [0, 13.333]], std sqrt(1107.17 / 6)
    # face 1 [[0,0],[40,0],[20,30]]: centred [[-20,-10],[20,-10],[0,20]], std sqrt(1400 / 6)
    # face 2 [[0,0],[40,0],[20,25]]: centred [[-20,-8.333],[20,-8.333],[0,16.667]], std sqrt(1216.67 / 6)
    nose_t = (40 / 3) / np.sqrt((2 * 20.5 ** 2 + 2 * (20 / 3) ** 2 + (40 / 3) ** 2) / 6)
    residual_1 = nose_t - 20 / np.sqrt(1400 / 6)
    residual_2 = nose_t - (50 / 3) / np.sqrt((800 + 2 * (25 / 3) ** 2 + (50 / 3) ** 2) / 6)
    bias_1, bias_2 = residual_1, 0.2 * residual_1 + 0.8 * residual_2
    assert abs(residual_1 + 0.32776) < 1e-4 and abs(bias_2 + 0.21664) < 1e-4  # the figures worked out above

    faces = [landmarks_with_anchors([0, 0], [40, 0], [20, 30]), landmarks_with_anchors([0, 0], [40, 0], [20, 25])]
    smoothing = FaceAligner(None, 256, nose_bias=True)
    resize = np.diag([256 / 210, 256 / 280])
    for lmk, bias in zip(faces, (bias_1, bias_2)):
        expected = alignment_matrix(lmk, 256) + np.c_[np.zeros((2, 2)), resize @ [0.0, bias]]
        np.testing.assert_allclose(smoothing.matrix(lmk), expected, atol=1e-12)
    plain = FaceAligner(None, 256, nose_bias=False)
    np.testing.assert_allclose(plain.matrix(faces[1]), alignment_matrix(faces[1], 256), atol=0)
