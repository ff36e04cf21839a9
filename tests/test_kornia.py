"""align=kornia / restore=kornia against their OpenCV counterparts on real faces of the demo clip (on the CPU here).

The batch has three faces whose ROIs differ in size: a frame of the clip, another frame shrunk to a fifth (a small
face: a 5-tap feather, OpenCV's fixed small Gaussian kernel), and the first frame cut through the face at its right
edge (the ROI clamped to the frame and narrower than the batch's padded ROIs: the erosion and blur borders count).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from lipsync_lab.config import compose
from lipsync_lab.face.align import alignment_matrix, warp_faces_cv2
from lipsync_lab.face.kornia import KorniaAlign, KorniaRestore, _gaussian_blur
from lipsync_lab.face.landmarks import LandmarkDetector
from lipsync_lab.face.common import roi_box
from lipsync_lab.face.restore import restore_cv2

RES = 256


@pytest.fixture(scope="module")
def batch(real_frames):
    """(frames, matrices) of three faces with different ROI sizes."""
    detector = LandmarkDetector()
    lmk0, lmk1 = detector(real_frames[0], 0), detector(real_frames[6], 6)
    assert lmk0 is not None and lmk1 is not None
    m0 = alignment_matrix(lmk0, RES)
    x0, _, x1, _ = roi_box(m0, RES, real_frames[0].shape)
    cut = (x0 + x1) // 2
    small = cv2.resize(real_frames[6], None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)
    frames = [real_frames[0], small, np.ascontiguousarray(real_frames[0][:, :cut])]
    matrices = [m0, alignment_matrix(lmk1 * 0.2, RES), m0]
    return frames, matrices


@pytest.fixture(scope="module")
def generated(batch):
    """Generated-looking faces: the cv2 crops with the mouth region inverted, so the paste shows."""
    faces = warp_faces_cv2(*batch, RES)
    faces[:, 150:220, 70:190] = 255 - faces[:, 150:220, 70:190]
    return faces


def roi_and_outside(frame, matrix):
    x0, y0, x1, y1 = roi_box(matrix, RES, frame.shape)
    outside = np.ones(frame.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    return (slice(y0, y1), slice(x0, x1)), outside


def test_rois_differ_and_one_is_clamped(batch):
    boxes = [roi_box(m, RES, f.shape) for f, m in zip(*batch)]
    sizes = {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes}
    assert len(sizes) == 3
    assert boxes[2][2] == batch[0][2].shape[1]  # the cut frame's ROI ends at the frame's right edge


def test_align_matches_cv2_and_stays_on_the_device(batch):
    frames, matrices = batch
    crops = KorniaAlign(device="cpu")(frames, matrices, RES)
    assert isinstance(crops, torch.Tensor) and crops.device.type == "cpu"
    assert crops.dtype == torch.uint8 and crops.shape == (3, RES, RES, 3)
    ref = warp_faces_cv2(frames, matrices, RES)
    for i, (got, want) in enumerate(zip(crops.numpy(), ref)):
        diff = np.abs(got.astype(int) - want)
        # bicubic vs Lanczos: mean < 1 grey level over the crop (grey border included); bilinear's max is ~33
        assert diff.mean() < 1.0 and diff.max() < 16, (i, diff.mean(), diff.max())
    assert (ref[2] == 127).all(-1).mean() > 0.2  # the cut face's crop is partly border, and that agrees too


def test_align_full_frame_equals_the_box_version(batch):
    frames, matrices = batch
    boxed = KorniaAlign(device="cpu")(frames, matrices, RES)
    whole = KorniaAlign(device="cpu", full_frame=True)(frames, matrices, RES)
    assert np.abs(boxed.numpy().astype(int) - whole.numpy()).max() <= 1  # same taps, float rounding aside


@pytest.mark.parametrize("full_frame", [False, True], ids=["roi", "full_frame"])
def test_restore_matches_cv2_inside_and_is_exact_outside(batch, generated, full_frame):
    frames, matrices = batch
    out = KorniaRestore(device="cpu", full_frame=full_frame)(frames, generated, matrices)
    assert len(out) == 3
    for i, (frame, face, matrix, got) in enumerate(zip(frames, generated, matrices, out)):
        assert got.shape == frame.shape and got.dtype == np.uint8
        want = restore_cv2(frame, face, matrix)
        roi, outside = roi_and_outside(frame, matrix)
        diff = np.abs(got[roi].astype(int) - want[roi])
        assert diff.mean() < 1.0 and diff.max() < 16, (i, diff.mean(), diff.max())
        # outside the cv2 ROI: the input frame bit for bit (the whole-frame variant too: its mask and feather are
        # exactly 0 there, so the blend gives the frame's own values back)
        assert np.array_equal(got[outside], frame[outside]), i
        assert np.abs(got[roi].astype(int) - frame[roi]).max() > 100  # the altered mouth was pasted


def test_restore_takes_a_host_array_or_a_tensor(batch, generated):
    frames, matrices = batch
    restore = KorniaRestore(device="cpu")
    from_array = restore(frames, generated, matrices)
    from_tensor = restore(frames, torch.from_numpy(generated), matrices)
    assert all(np.array_equal(a, b) for a, b in zip(from_array, from_tensor))
    assert all(a is not f for a, f in zip(from_array, frames))  # copies: the input frames are untouched
    assert np.array_equal(frames[0], batch[0][0])


def test_soft_mask_matches_cv2(batch):
    """A white face on black frames: the output is 255·soft·mask, the feather alone — erosion and blur borders at
    the ROI's edge included (a zero border in the erosion is off by ~250 levels on the cut face, a replicated one
    in the blur by 6)."""
    frames, matrices = batch
    black = [np.zeros_like(f) for f in frames]
    white = np.full((3, RES, RES, 3), 255, np.uint8)
    out = KorniaRestore(device="cpu")(black, white, matrices)
    for i, (frame, face, matrix, got) in enumerate(zip(black, white, matrices, out)):
        want = restore_cv2(frame, face, matrix)
        diff = np.abs(got.astype(int) - want)
        assert diff.max() <= 4 and diff.mean() < 0.01, (i, diff.max(), diff.mean())
        assert (got > 0).sum() > 0.99 * (want > 0).sum() > 0


@pytest.mark.parametrize("ksize", [3, 5, 21])
def test_feather_blur_is_opencvs(ksize):
    """ksize ≤ 7: OpenCV's fixed small kernels, else the automatic sigma; BORDER_REFLECT_101 at each ROI's edge."""
    rng = np.random.default_rng(ksize)
    sizes = [(40, 50), (33, 27)]
    planes = torch.from_numpy(rng.random((2, 1, 40, 50), dtype=np.float32))
    got = _gaussian_blur(planes, ksize, torch.tensor([h for h, _ in sizes]), torch.tensor([w for _, w in sizes]))
    for i, (h, w) in enumerate(sizes):
        want = cv2.GaussianBlur(planes[i, 0, :h, :w].numpy(), (ksize, ksize), 0)
        np.testing.assert_allclose(got[i, 0, :h, :w].numpy(), want, atol=1e-5)


def test_empty_batches():
    assert KorniaAlign(device="cpu")([], [], RES).shape == (0, RES, RES, 3)
    assert KorniaRestore(device="cpu")([], np.zeros((0, RES, RES, 3), np.uint8), []) == []


def test_the_options_build_from_their_configs():
    cfg = compose(["align=kornia", "restore=kornia"])
    align, restore = instantiate(cfg.align), instantiate(cfg.restore)
    assert isinstance(align, KorniaAlign) and isinstance(restore, KorniaRestore)
    assert align.device == restore.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert restore.full_frame is False
