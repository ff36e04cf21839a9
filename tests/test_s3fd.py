"""S3FD (lipsync_lab.quality.s3fd): head shapes per stride, the official sfd_face.pth key names, anchors and box
decoding, NMS, the preprocessing convention, and loading a file (good, truncated, garbage) — all on random weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.quality.s3fd import S3FD, decode, nms, preprocess, prior_boxes

# sfd_face.pth's keys, as syncnet_python / LatentSync's S3FDNet names them (literal, not derived from the module):
# vgg indices of conv1_1 … conv5_3, fc6, fc7 (ReLUs and pools take the other indices), with their weight shapes.
VGG_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
             17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
             31: (1024, 512), 33: (1024, 1024)}
EXTRAS = {0: (256, 1024, 1), 1: (512, 256, 3), 2: (128, 512, 1), 3: (256, 128, 3)}
HEAD_IN = (256, 512, 512, 1024, 512, 256)


def official_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i, (cout, cin) in VGG_CONVS.items():
        k = 1 if i == 33 else 3
        shapes[f"vgg.{i}.weight"], shapes[f"vgg.{i}.bias"] = (cout, cin, k, k), (cout,)
    shapes |= {"L2Norm3_3.weight": (256,), "L2Norm4_3.weight": (512,), "L2Norm5_3.weight": (512,)}
    for i, (cout, cin, k) in EXTRAS.items():
        shapes[f"extras.{i}.weight"], shapes[f"extras.{i}.bias"] = (cout, cin, k, k), (cout,)
    for i, cin in enumerate(HEAD_IN):
        shapes[f"loc.{i}.weight"], shapes[f"loc.{i}.bias"] = (4, cin, 3, 3), (4,)
        conf = 4 if i == 0 else 2  # max-out background on the stride-4 head
        shapes[f"conf.{i}.weight"], shapes[f"conf.{i}.bias"] = (conf, cin, 3, 3), (conf,)
    return shapes


@pytest.fixture(scope="module")
def net() -> S3FD:
    return S3FD.random(0)


def test_state_dict_matches_sfd_face_keys(net):
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == official_shapes()
    assert len(got) == 65
    # L2Norm scales start at 10, 8, 5 (what an untrained S3FD uses; the file overrides them)
    scales = [float(getattr(net, n).weight.detach()[0]) for n in ("L2Norm3_3", "L2Norm4_3", "L2Norm5_3")]
    assert scales == [10.0, 8.0, 5.0]
    # fc6 is a 3x3 dilated by 6 (padded 6: same size) — a shape the state dict and the level sizes cannot show
    assert (net.vgg[31].dilation, net.vgg[31].padding) == ((6, 6), (6, 6))


@pytest.mark.parametrize("hw, levels", [
    ((128, 160), [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]),
    # 132/4 = 33 is odd: the pool after conv3_3 rounds up (ceil_mode) → 17, where a floor pool would give 16
    ((132, 164), [(33, 41), (17, 21), (8, 10), (4, 5), (2, 3), (1, 2)]),
])
def test_level_shapes_follow_strides(net, hw, levels):
    with torch.inference_mode():
        out = net(torch.randn(1, 3, *hw))
    assert len(out) == 6
    assert [tuple(loc.shape) for loc, _ in out] == [(1, 4, h, w) for h, w in levels]
    assert [tuple(conf.shape) for _, conf in out] == [(1, 2, h, w) for h, w in levels]


def test_max_out_background():
    net = S3FD.random(0)
    with torch.no_grad():
        net.conf[0].weight.zero_()
        net.conf[0].bias.copy_(torch.tensor([1.0, 5.0, 2.0, 3.0]))
        _, conf = net(torch.randn(1, 3, 64, 64))[0]
    assert torch.equal(conf[0, :, 0, 0], torch.tensor([5.0, 3.0]))


def test_prior_boxes_centres_sizes_and_order():
    pri = prior_boxes([(2, 3), (1, 2)], (8, 12))  # strides 4 and 8 on an 8x12 input
    assert pri.shape == (8, 4)
    # level 0 row-major: (cx, cy) = ((j + .5)·4/12, (i + .5)·4/8), anchor 16 px
    np.testing.assert_allclose(pri[:6, 0], [2 / 12, 6 / 12, 10 / 12] * 2, rtol=1e-6)
    np.testing.assert_allclose(pri[:6, 1], [2 / 8] * 3 + [6 / 8] * 3, rtol=1e-6)
    np.testing.assert_allclose(pri[:6, 2:], [[16 / 12, 16 / 8]] * 6, rtol=1e-6)
    np.testing.assert_allclose(pri[6:], [[4 / 12, 4 / 8, 32 / 12, 32 / 8], [12 / 12, 4 / 8, 32 / 12, 32 / 8]],
                               rtol=1e-6)


def test_decode_zero_offsets_give_priors_and_known_offsets_known_box():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.1, 0.1]])
    boxes = decode(torch.zeros(2, 4), priors)
    torch.testing.assert_close(boxes, torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.2, 0.7, 0.3, 0.8]]))
    # dx = 1 → centre + 0.1·w; dw = ln 2 / 0.2 → width doubled
    loc = torch.tensor([[1.0, -2.0, math.log(2) / 0.2, 0.0]])
    box = decode(loc, priors[:1])
    # centre (0.5 + 0.1·0.2, 0.5 − 0.2·0.4) = (0.52, 0.42), size (0.4, 0.4)
    torch.testing.assert_close(box, torch.tensor([[0.32, 0.22, 0.72, 0.62]]))


def test_nms_keeps_expected_boxes():
    boxes = np.array([[0, 0, 10, 10],     # best
                      [1, 0, 11, 10],     # IoU 9/11 with the best → suppressed
                      [20, 20, 30, 30],   # apart → kept
                      [0, 5, 10, 15],     # IoU 50/150 = 1/3 with the best: kept at 0.5, suppressed at 0.3
                      [21, 20, 31, 30]], dtype=np.float32)  # suppressed by box 2
    scores = np.array([0.9, 0.85, 0.8, 0.7, 0.75])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]
    # the threshold is strict: IoU exactly 1/3 is kept at 1/3
    assert nms(boxes[[0, 3]], scores[[0, 3]], 1 / 3).tolist() == [0, 1]
    # best-first order even when the input is not sorted
    assert nms(boxes[[2, 0]], np.array([0.1, 0.9]), 0.3).tolist() == [1, 0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.3).tolist() == []


def test_preprocess_keeps_rgb_minus_mean_and_scales():
    rgb = np.zeros((80, 120, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    x = preprocess(rgb, 0.5)
    assert x.shape == (1, 3, 40, 60) and x.dtype == torch.float32
    # syncnet_python's convention: R − 123, G − 117, B − 104, channels in RGB order
    assert x[0, :, 0, 0].tolist() == [77.0, -17.0, -54.0]
    with pytest.raises(ValueError, match="at least 28"):
        preprocess(np.zeros((100, 100, 3), np.uint8), 0.25)


def test_detect_returns_frame_boxes_best_first():
    net = S3FD.random(0)
    with torch.no_grad():  # zero box offsets: every detection is its anchor, so its place in the frame is known
        for head in net.loc:
            head.weight.zero_()
            head.bias.zero_()
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
    dets = net.detect(frame, conf_th=0.0)  # random weights: scores near 0.5, so take everything above 0.05
    assert dets.ndim == 2 and dets.shape[1] == 5 and len(dets) > 0 and dets.dtype == np.float32
    assert np.all(np.diff(dets[:, 4]) <= 0)
    # frame pixels: at scale 0.25 an anchor of a px on the 80x64 input is 4a px on the 320x256 frame, centred on
    # its cell's centre (j + 0.5)·stride·4
    width, height = dets[:, 2] - dets[:, 0], dets[:, 3] - dets[:, 1]
    np.testing.assert_allclose(width, height, rtol=1e-5)
    side = np.rint(width).astype(int)
    assert set(side) <= {64, 128, 256, 512, 1024, 2048}
    stride = side // 16  # anchor = 4 × stride
    cx = (dets[:, 0] + dets[:, 2]) / 2
    np.testing.assert_allclose((cx / (4 * stride) - 0.5) % 1, 0, atol=1e-4)
    # after the final NMS no two kept boxes overlap by more than IoU 0.1
    assert len(nms(dets[:, :4], dets[:, 4], 0.1)) == len(dets)
    assert len(dets) < len(net.detect(frame, conf_th=0.0, scale=0.5))
    assert net.detect(frame, conf_th=0.999).shape == (0, 5)


def test_from_file_round_trip(tmp_path):
    src = S3FD.random(1)
    path = tmp_path / "sfd_face.pth"
    torch.save(src.state_dict(), path)
    loaded = S3FD.from_file(path)
    assert not loaded.training
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        for (la, ca), (lb, cb) in zip(src(x), loaded(x)):
            assert torch.equal(la, lb) and torch.equal(ca, cb)
    # a DataParallel-saved file (`module.` prefix) loads too
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "dp.pth")
    assert torch.equal(S3FD.from_file(tmp_path / "dp.pth").conf[0].bias, src.conf[0].bias)


def one_line_error(path) -> str:
    with pytest.raises(LipsyncInputError) as info:
        S3FD.from_file(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_bad_files_raise_one_line(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(S3FD.random(1).state_dict(), good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    one_line_error(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    one_line_error(garbage)
    # a readable file of another net: the misfit is named
    other = tmp_path / "other.pth"
    sd = S3FD.random(1).state_dict()
    sd.pop("L2Norm3_3.weight")
    sd["conf.0.weight"] = sd["conf.0.weight"][:2]
    torch.save(sd, other)
    message = one_line_error(other)
    assert "S3FD (sfd_face.pth)" in message and "L2Norm3_3.weight" in message and "conf.0.weight" in message
    one_line_error(tmp_path / "missing.pth")
