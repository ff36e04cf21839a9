"""S3FD face detector (Zhang et al. 2017, "S³FD: Single Shot Scale-invariant Face Detector") as syncnet_python's
`detectors/s3fd` and LatentSync's `eval/detectors/s3fd` run it: the detector whose face tracks feed the SyncNet
scores LatentSync reports, so its layers, key names, preprocessing, anchors and thresholds follow that code.

Weights: the official `sfd_face.pth` (a plain state dict; syncnet_python and LatentSync load it strictly, LatentSync
with weights_only=True). Its keys are those of their `S3FDNet`, which this module reproduces name for name:
`vgg.<i>` (VGG16 conv1_1…conv5_3, fc6, fc7 with the ReLUs and pools counted in the indices), `L2Norm3_3/4_3/5_3`,
`extras.0-3` (conv6_1, conv6_2, conv7_1, conv7_2) and the six heads `loc.0-5` / `conf.0-5`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipsync_lab.weights import load_strict, read_checkpoint, rename, tensor_dict

# VGG16 trunk in `vgg` order: channels = conv3x3 + ReLU, "M" = 2x2 max pool, "C" = the same with ceil_mode (the
# pool after conv3_3 rounds up, so an odd stride-4 map still gets a stride-8 cell for its last row/column).
_VGG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512, "M")
# `vgg` indices ending the four trunk segments whose outputs feed heads: conv3_3, conv4_3, conv5_3 (each taken
# after its ReLU, before its pool) and fc7.
_TAPS = (16, 23, 30, 35)
_L2_SCALES = {"L2Norm3_3": (256, 10.0), "L2Norm4_3": (512, 8.0), "L2Norm5_3": (512, 5.0)}
_HEAD_IN = (256, 512, 512, 1024, 512, 256)  # conv3_3, conv4_3, conv5_3, fc7, conv6_2, conv7_2

STRIDES = (4, 8, 16, 32, 64, 128)      # one square anchor per cell, 4x its level's stride ("scale-equitable")
ANCHORS = (16, 32, 64, 128, 256, 512)
VARIANCES = (0.1, 0.2)                 # SSD box encoding: centre offsets x0.1, log-size offsets x0.2

# Post-processing of syncnet_python's `Detect` and `detect_faces`: candidates above 0.05, at most 5000 of them into an
# NMS at IoU 0.3, at most 750 kept; then the caller's conf_th and a second NMS at IoU 0.1 on the frame's boxes.
CANDIDATE_TH, CANDIDATE_TOP, KEEP_TOP = 0.05, 5000, 750
NMS_IOU, FINAL_NMS_IOU = 0.3, 0.1

# syncnet_python swaps its RGB frame to BGR, subtracts Caffe's BGR mean (104, 117, 123) and swaps back: the net sees
# RGB minus the mean of each channel. Kept as is, so detections (hence SyncNet crops) match LatentSync's eval.
RGB_MEAN = np.array([123.0, 117.0, 104.0], dtype=np.float32)
# Smallest input side with a non-empty stride-32 map: 28 → 14 → 7 → 4 (ceil) → 2 → 1; 27 ends at 0.
MIN_SIDE = 28


class L2Norm(nn.Module):
    """Per-pixel L2 normalisation with a learned per-channel scale (ParseNet): conv3_3..5_3 have far larger
    activations than fc7, so their heads see rescaled features. The parameter is `weight`, as in the file."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # eps outside the sqrt, as in the reference
        return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10) * self.weight.view(1, -1, 1, 1)


def _vgg() -> nn.ModuleList:
    layers, cin = [], 3
    for v in _VGG:
        if v in ("M", "C"):
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=v == "C"))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    # fc6/fc7 of VGG turned convolutional: fc6 a 3x3 with dilation 6 (same-size output), fc7 a 1x1
    layers += [nn.Conv2d(512, 1024, 3, padding=6, dilation=6), nn.ReLU(), nn.Conv2d(1024, 1024, 1), nn.ReLU()]
    return nn.ModuleList(layers)


class S3FD(nn.Module):
    """The S3FD network; `forward` gives the raw head outputs, `detect` runs syncnet_python's whole detection."""

    def __init__(self):
        super().__init__()
        self.vgg = _vgg()
        for name, (channels, scale) in _L2_SCALES.items():
            self.add_module(name, L2Norm(channels, scale))
        self.extras = nn.ModuleList([nn.Conv2d(1024, 256, 1), nn.Conv2d(256, 512, 3, 2, padding=1),
                                     nn.Conv2d(512, 128, 1), nn.Conv2d(128, 256, 3, 2, padding=1)])
        self.loc = nn.ModuleList([nn.Conv2d(c, 4, 3, padding=1) for c in _HEAD_IN])
        # the stride-4 head has 3 background logits (max-out background, S3FD §3.3): tiny anchors are mostly
        # background, and taking the max of three lowers false positives there
        self.conf = nn.ModuleList([nn.Conv2d(c, 4 if i == 0 else 2, 3, padding=1) for i, c in enumerate(_HEAD_IN)])

    def forward(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """(N,3,H,W) preprocessed input → per level (stride 4…128): (loc (N,4,h,w), conf logits (N,2,h,w)), conf
        channel 0 = background (max-out already applied), 1 = face."""
        norms = (self.L2Norm3_3, self.L2Norm4_3, self.L2Norm5_3, None)
        feats, start = [], 0
        for end, norm in zip(_TAPS, norms):
            for layer in self.vgg[start:end]:
                x = layer(x)
            feats.append(x if norm is None else norm(x))
            start = end
        for k, conv in enumerate(self.extras):
            x = F.relu(conv(x))
            if k % 2:  # conv6_2, conv7_2
                feats.append(x)
        out = []
        for feat, loc, conf in zip(feats, self.loc, self.conf):
            c = conf(feat)
            if c.shape[1] == 4:
                c = torch.cat([c[:, :3].amax(dim=1, keepdim=True), c[:, 3:]], dim=1)
            out.append((loc(feat), c))
        return tuple(out)

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> S3FD:
        """The net with `sfd_face.pth`'s weights, in eval mode; a file that is unreadable or not this net raises a
        one-line LipsyncInputError naming it."""
        sd = tensor_dict(read_checkpoint(path), path)
        # a state dict saved from nn.DataParallel carries a `module.` prefix
        sd, origin = rename(sd, lambda k: k.removeprefix("module."), path)
        net = cls()
        load_strict(net, sd, origin, path, "S3FD (sfd_face.pth)")
        return net.to(device).eval()

    @classmethod
    def random(cls, seed: int = 0) -> S3FD:
        """Seeded random weights (PyTorch's default init), eval mode, without disturbing the global RNG: for tests."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls().eval()

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray, conf_th: float = 0.9, scale: float = 0.25) -> np.ndarray:
        """Faces in an RGB uint8 (H,W,3) frame → float32 (n,5) [x1, y1, x2, y2, score] in frame pixels, best first.
        Defaults are LatentSync's eval call, `detect_faces(rgb, conf_th=0.9, scales=[0.25])`."""
        device = next(self.parameters()).device
        x = preprocess(rgb, scale).to(device)
        levels = self(x)
        loc = torch.cat([lo.permute(0, 2, 3, 1).reshape(-1, 4) for lo, _ in levels]).float()
        score = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, 2) for _, c in levels]).float().softmax(-1)[:, 1]
        # Thresholding at conf_th *before* the IoU-0.3 NMS keeps the same boxes above conf_th as the reference's
        # threshold-after: greedy NMS visits scores in descending order, so boxes below conf_th can only suppress
        # boxes below them; the 5000/750 caps count from the top in both orders.
        cand = torch.nonzero(score > max(conf_th, CANDIDATE_TH)).squeeze(1)
        cand = cand[score[cand].argsort(descending=True, stable=True)[:CANDIDATE_TOP]]
        priors = prior_boxes([c.shape[-2:] for _, c in levels], x.shape[-2:]).to(device)
        boxes = decode(loc[cand], priors[cand]).cpu().numpy()
        scores = score[cand].cpu().numpy()
        keep = nms(boxes, scores, NMS_IOU)[:KEEP_TOP]
        # boxes are fractions of the *resized* input; the reference scales them by the original frame's size
        h, w = rgb.shape[:2]
        dets = np.concatenate([boxes[keep] * np.array([w, h, w, h], np.float32), scores[keep, None]], axis=1)
        # the reference's second NMS (per frame, over all scales) — with one scale it still prunes: IoU 0.1 < 0.3
        return dets[nms(dets[:, :4], dets[:, 4], FINAL_NMS_IOU)].astype(np.float32)


def preprocess(rgb: np.ndarray, scale: float) -> torch.Tensor:
    """RGB uint8 (H,W,3) frame → the net's (1,3,h,w) float input: bilinear resize by `scale` (cv2, as the
    reference), minus RGB_MEAN, channels kept in RGB order (see RGB_MEAN)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"S3FD.detect takes an RGB uint8 (H,W,3) frame, got {rgb.dtype} {rgb.shape}")
    small = cv2.resize(rgb, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    if min(small.shape[:2]) < MIN_SIDE:
        raise ValueError(f"a {rgb.shape[1]}x{rgb.shape[0]} frame at scale {scale} is {small.shape[1]}x"
                         f"{small.shape[0]}; S3FD needs at least {MIN_SIDE} pixels a side")
    return torch.from_numpy(small.astype(np.float32) - RGB_MEAN).permute(2, 0, 1)[None].contiguous()


def prior_boxes(level_hw, image_hw) -> torch.Tensor:
    """Anchors for level map sizes [(h, w), …] (strides STRIDES) on an input of image_hw → float32 (P,4)
    [cx, cy, w, h] as fractions of the input, level by level, each row-major — the order of the heads' flattened
    (N,h,w,C) outputs. A cell's centre sits half a stride in (cell + 0.5)."""
    H, W = (int(s) for s in image_hw)
    out = []
    for (h, w), step, size in zip(level_hw, STRIDES, ANCHORS):
        # float64 then float32, written as (j + 0.5) / (W / step) like the reference, so the values match exactly
        cy, cx = torch.meshgrid((torch.arange(int(h), dtype=torch.float64) + 0.5) / (H / step),
                                (torch.arange(int(w), dtype=torch.float64) + 0.5) / (W / step), indexing="ij")
        n = cx.numel()
        out.append(torch.stack([cx.flatten(), cy.flatten(), torch.full((n,), size / W, dtype=torch.float64),
                                torch.full((n,), size / H, dtype=torch.float64)], dim=1))
    return torch.cat(out).float()


def decode(loc: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float] = VARIANCES) -> torch.Tensor:
    """SSD offsets (P,4) [dx, dy, dw, dh] against priors (P,4) [cx, cy, w, h] → boxes (P,4) [x1, y1, x2, y2] in the
    priors' units: centre = prior centre + d·var0·prior size, size = prior size·exp(d·var1)."""
    centre = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])
    top_left = centre - size / 2
    return torch.cat([top_left, top_left + size], dim=1)  # x2 = x1 + w, the reference's rounding


def nms(boxes: np.ndarray, scores: np.ndarray, iou_th: float) -> np.ndarray:
    """Greedy non-maximum suppression → indices kept, best score first; a box goes when its IoU with a kept,
    better box exceeds iou_th. Areas are (x2-x1)·(y2-y1), no +1. Written here (numpy) because torchvision — whose
    `ops.nms` this would otherwise be — is not a dependency, and a few lines pin the reference's exact rule."""
    x1, y1, x2, y2 = (np.asarray(boxes, dtype=np.float64)[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = iw * ih
        with np.errstate(invalid="ignore", divide="ignore"):  # two empty boxes: 0/0 → NaN → suppressed, as upstream
            iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_th]
    return np.asarray(keep, dtype=np.intp)
