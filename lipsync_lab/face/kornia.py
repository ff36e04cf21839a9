"""The `align=kornia` and `restore=kornia` options: the face crop and the paste-back on a torch device (kornia).

Both do what their OpenCV counterparts (face/align.py `warp_faces_cv2`, face/restore.py `restore_cv2`) do, batched
over the k faces of a batch and limited to each face's region of its frame:

* `KorniaAlign` uploads, per face, only the box of the frame the crop reads from (`roi_box` plus a margin for the
  interpolation kernel), warps all k boxes with one `warp_affine` call (per-face matrices, the boxes padded to one
  common size) and returns the crops as a uint8 (k, res, res, 3) tensor on the device, where the diffusion stage
  takes them (no host round trip). `full_frame=True` uploads whole frames instead (for comparison).
* `KorniaRestore` uploads the k ROIs (`roi_box`, as `restore_cv2`) in one transfer, runs LatentSync's restore_img
  on them (inverse warp of the face and of an all-ones mask, 2×2 erosion, centre erosion + Gaussian feather sized
  by int(sqrt(mask area))//20, blend in float32) and downloads the blended ROIs in one transfer, pasted into copies
  of the frames: every pixel outside a face's ROI is its frame's, bit for bit. `full_frame=True` keeps the slow
  whole-frame variant (the ROI is the whole frame) for comparison.

Conventions that make these agree with OpenCV (tests/test_kornia.py measures it):
* Pixel centres: cv2.warpAffine samples output pixel (x, y) at M⁻¹(x, y), pixel centres at integer indices.
  warp_affine(align_corners=True) (its default since kornia PR #896, "to match OpenCV") normalises pixel i of n to
  2i/(n−1)−1 and grid_sample(align_corners=True) maps that back to the centre of pixel i: the same convention, so the
  cv2 matrices are used unchanged, only their translation shifted by the box's origin. kornia before PR #3945 (issue
  #3904) normalised that way whatever the flag, so align_corners=False mixed conventions (a sub-pixel scale and
  shift); kornia 0.9 honours the flag and both settings give the same warp here (measured to 2e-7). True is passed
  explicitly: right in every version.
* Interpolation: kornia has no Lanczos. Bicubic (grid_sample's, a = −0.75, OpenCV's INTER_CUBIC kernel) agrees
  with cv2's INTER_LANCZOS4 about twice as well as bilinear, which blurs the detail Lanczos keeps. Measured on the
  demo clip's first frame (1080×1920, 256² crop): align mean |Δ| 0.14 grey levels bicubic vs 0.28 bilinear (max 7
  vs 33); restore of a face with an altered mouth, inside the ROI, mean 0.09 vs 0.19 (max 9 vs 30). The `mode`
  argument picks the other one (`+align.mode=bilinear`).
* Constant border: the crop's border is grey 127 like cv2's BORDER_CONSTANT. Interpolation is linear in the pixel
  values with weights summing to 1, so warping (value − 127) with zero padding and adding 127 back is exactly a
  constant-127 border, in one grid_sample (kornia's padding_mode="fill" warps a second, all-ones image for it).
  The part of a padded box beyond the frame's region reads 127 too, as it would beyond the frame's edge.
* The restore mask is warped bilinearly (cv2.warpAffine's default INTER_LINEAR) with zero border, as upstream.
* Erosion: cv2.erode's default border (morphologyDefaultBorderValue: +inf for erosion) never wins; kornia's
  `border_type="geodesic"` is the same. In a padded ROI, the pixels past a face's ROI are set to +inf before each
  erosion, so the ROI's edge behaves as the image edge does for cv2 (which erodes the ROI-sized mask). The anchor of
  an even kernel is its centre cell (k//2), in both. The 2×2 erosion is kornia's; the (2·edge)² centre erosion is
  two separable running minima (a flat rectangle: exact) built by doubling, O(log edge) passes: kornia's erosion
  would build a (2·edge)²-fold intermediate on CUDA (its unfold engine: upstream's 19 GB spike, reference §2.5) or
  take 2·edge shifted passes per axis (its shift engine: about 7× slower on this CPU).
* Feather: cv2.GaussianBlur(ksize=2·edge+1, sigma=0) uses cv2.getGaussianKernel(ksize, 0): sigma
  0.3·((ksize−1)·0.5 − 1) + 0.8, except for ksize ≤ 7 where OpenCV takes fixed binomial-like taps (e.g. [¼ ½ ¼]).
  The 1-D kernel is therefore taken from cv2.getGaussianKernel itself and applied separably, with OpenCV's default
  border (BORDER_REFLECT_101) reproduced at each face's own ROI edge by index gathering. (With the formula's sigma
  for every size, a 5-tap feather differs from cv2's.)
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from kornia.geometry.transform import warp_affine
from kornia.morphology import erosion

from lipsync_lab.devices import resolve_device
from lipsync_lab.face.common import GREY, roi_box

__all__ = ["KorniaAlign", "KorniaRestore"]

# bicubic reads the 4×4 source pixels around a sample (2 on each side); roi_box's corners are floored/ceiled, so 3
# more pixels than that keep every tap of every crop pixel inside the uploaded box
ALIGN_MARGIN = 5


class _Staging:
    """A reused host buffer that regions are packed into before one upload; pinned when the device is CUDA, so the
    copy is asynchronous, and not overwritten before the previous upload has read it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pinned = device.type == "cuda"
        self._buffer: torch.Tensor | None = None
        self._done = None  # CUDA event recorded after the last upload from the buffer

    def host(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray]:
        n = int(np.prod(shape))
        if self._done is not None:
            self._done.synchronize()
        if self._buffer is None or self._buffer.numel() < n:
            self._buffer = torch.empty(max(n, 1), dtype=torch.uint8, pin_memory=self.pinned)
        tensor = self._buffer[:n].view(shape)
        return tensor, tensor.numpy()

    def upload(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return tensor
        out = tensor.to(self.device, non_blocking=self.pinned)
        if self.device.type == "cuda":
            self._done = torch.cuda.Event()
            self._done.record()
        return out


def _pack(staging: _Staging, frames, boxes, fill: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The boxes (x0, y0, x1, y1) of the frames, each at the top-left of one common (k, H, W, 3) canvas (the rest
    `fill`), uploaded at once → uint8 tensor on the device, and each box's (h, w)."""
    sizes = [(max(0, y1 - y0), max(0, x1 - x0)) for x0, y0, x1, y1 in boxes]
    height = max(1, max(h for h, _ in sizes))
    width = max(1, max(w for _, w in sizes))
    tensor, canvas = staging.host((len(frames), height, width, 3))
    canvas.fill(fill)
    for i, (frame, (x0, y0, x1, y1), (h, w)) in enumerate(zip(frames, boxes, sizes)):
        if h and w:
            canvas[i, :h, :w] = frame[y0:y1, x0:x1]
    return staging.upload(tensor), sizes


def _matrices(matrices, device) -> torch.Tensor:
    return torch.as_tensor(np.stack(matrices), dtype=torch.float32, device=device)


class KorniaAlign:
    """`align=kornia`: `(frames, matrices, resolution)` → (k, res, res, 3) uint8 crops, a tensor on the device."""

    def __init__(self, device: str = "auto", full_frame: bool = False, mode: str = "bicubic"):
        self.device = resolve_device(device)
        self.full_frame = bool(full_frame)
        self.mode = mode
        self._staging = _Staging(self.device)

    def __call__(self, frames: list[np.ndarray], matrices: list[np.ndarray], resolution: int) -> torch.Tensor:
        res = int(resolution)
        if not frames:
            return torch.empty((0, res, res, 3), dtype=torch.uint8, device=self.device)
        if self.full_frame:
            boxes = [(0, 0, f.shape[1], f.shape[0]) for f in frames]
        else:
            boxes = [roi_box(m, res, f.shape, pad=ALIGN_MARGIN) for f, m in zip(frames, matrices)]
        src, _ = _pack(self._staging, frames, boxes, GREY)
        shifted = []
        for m, (x0, y0, _, _) in zip(matrices, boxes):
            m = np.asarray(m, np.float64).copy()
            m[:, 2] += m[:, :2] @ (x0, y0)  # box pixel → frame pixel → crop pixel
            shifted.append(m)
        src = src.permute(0, 3, 1, 2).float() - GREY  # grey border = zero padding of (value − 127)
        crops = warp_affine(src, _matrices(shifted, self.device), (res, res), mode=self.mode,
                            padding_mode="zeros", align_corners=True)
        crops = (crops + GREY).round_().clamp_(0, 255).to(torch.uint8)
        return crops.permute(0, 2, 3, 1).contiguous()


def _reflect101(n_out: int, pad: int, sizes: torch.Tensor) -> torch.Tensor:
    """Indices (k, n_out + 2·pad) into each face's first `sizes[i]` pixels: OpenCV's BORDER_REFLECT_101 padding of
    `pad` pixels around position 0 … n_out−1 (positions past a face's size are never kept; clamped to be valid)."""
    pos = torch.arange(-pad, n_out + pad, device=sizes.device)[None, :]
    last = (sizes[:, None] - 1).clamp(min=0)
    pos = pos.abs()
    pos = torch.where(pos > last, 2 * last - pos, pos)
    return torch.minimum(pos.clamp(min=0), last)


def _running_min(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """min over x[i − size//2 … i − size//2 + size − 1] along `dim` (cv2.erode's window and anchor for a 1-D flat
    kernel; past the ends counts as +inf: cv2's default erosion border), in O(log size) ops: minima over windows of
    1, 2, 4, … are built by doubling, then the binary digits of `size` are combined."""
    n = x.shape[dim]
    before = size // 2
    pad = [0, 0] * (x.dim() - 1 - dim) + [before, size - 1 - before]
    x = torch.nn.functional.pad(x, pad, value=float("inf"))
    windows = {1: x}
    width = 1
    while 2 * width <= size:
        w = windows[width]
        m = w.shape[dim] - width
        windows[2 * width] = torch.minimum(w.narrow(dim, 0, m), w.narrow(dim, width, m))
        width *= 2
    out, offset = None, 0
    for width in sorted(windows, reverse=True):
        if size - offset >= width:
            part = windows[width].narrow(dim, offset, n)
            out = part if out is None else torch.minimum(out, part)
            offset += width
    return out


def _gaussian_blur(x: torch.Tensor, ksize: int, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """cv2.GaussianBlur(x, (ksize, ksize), 0) of each (1, H, W) plane within its own (h, w) ROI, separably.

    Each 1-D pass is a sum of shifted, weighted copies (exact float32, where a CUDA convolution may round through
    TF32, and faster than a one-channel convolution on the CPU)."""
    taps = cv2.getGaussianKernel(ksize, 0, ktype=cv2.CV_32F).ravel().tolist()
    pad = ksize // 2
    k, _, height, width = x.shape
    # horizontal pass (OpenCV filters rows first), then vertical
    cols = _reflect101(width, pad, widths)[:, None, None, :].expand(k, 1, height, width + 2 * pad)
    padded = x.gather(3, cols)
    x = padded[..., :width] * taps[0]
    for i in range(1, ksize):
        x.add_(padded[..., i:i + width], alpha=taps[i])
    rows = _reflect101(height, pad, heights)[:, None, :, None].expand(k, 1, height + 2 * pad, width)
    padded = x.gather(2, rows)
    x = padded[..., :height, :] * taps[0]
    for i in range(1, ksize):
        x.add_(padded[..., i:i + height, :], alpha=taps[i])
    return x


class KorniaRestore:
    """`restore=kornia`: `(frames, faces (k, res, res, 3) uint8 array or tensor, matrices)` → the frames with the
    faces pasted back (host arrays, copies of the input frames)."""

    def __init__(self, device: str = "auto", full_frame: bool = False, mode: str = "bicubic"):
        self.device = resolve_device(device)
        self.full_frame = bool(full_frame)
        self.mode = mode
        self._staging = _Staging(self.device)

    def __call__(self, frames: list[np.ndarray], faces, matrices: list[np.ndarray]) -> list[np.ndarray]:
        if not frames:
            return []
        dev = self.device
        faces = torch.as_tensor(faces).to(dev, non_blocking=True)
        k, res = faces.shape[0], faces.shape[1]
        if self.full_frame:
            boxes = [(0, 0, f.shape[1], f.shape[0]) for f in frames]
        else:
            boxes = [roi_box(m, res, f.shape) for f, m in zip(frames, matrices)]
        roi, sizes = _pack(self._staging, frames, boxes, 0)
        _, height, width, _ = roi.shape
        inverse = []
        for m, (x0, y0, _, _) in zip(matrices, boxes):
            inv = cv2.invertAffineTransform(np.asarray(m, np.float64))
            inv[:, 2] -= (x0, y0)  # crop pixel → ROI pixel
            inverse.append(inv)
        inverse = _matrices(inverse, dev)

        # the face and an all-ones mask, warped back into the ROIs (cv2: Lanczos → uint8; bilinear mask)
        warped = warp_affine(faces.permute(0, 3, 1, 2).float(), inverse, (height, width), mode=self.mode,
                             padding_mode="zeros", align_corners=True).round_().clamp_(0, 255)
        ones = torch.ones((k, 1, res, res), device=dev)
        mask = warp_affine(ones, inverse, (height, width), mode="bilinear", padding_mode="zeros", align_corners=True)

        heights = torch.tensor([h for h, _ in sizes], device=dev)
        widths = torch.tensor([w for _, w in sizes], device=dev)
        inside = ((torch.arange(height, device=dev)[None, :, None] < heights[:, None, None])
                  & (torch.arange(width, device=dev)[None, None, :] < widths[:, None, None]))[:, None]
        inf = torch.tensor(float("inf"), device=dev)
        # 2×2 erosion of the ROI-sized mask, past the ROI counting as border (never wins)
        mask = erosion(torch.where(inside, mask, inf), torch.ones(2, 2, device=dev), border_type="geodesic")
        mask = torch.where(inside, mask, 0.0)
        # edge = int(sqrt(mask area)) // 20 per face: k numbers to the host (they size the kernels)
        areas = mask.sum((1, 2, 3)).cpu().numpy()
        edges = np.sqrt(areas).astype(np.int64) // 20

        soft = mask.clone()
        for edge in np.unique(edges[edges > 0]).tolist():
            group = torch.as_tensor(np.flatnonzero(edges == edge), device=dev)
            centre = torch.where(inside[group], mask[group], inf)
            # the (2·edge)² flat erosion as a column then a row running minimum (exact for a rectangle)
            centre = _running_min(_running_min(centre, 2 * edge, 2), 2 * edge, 3)
            soft[group] = _gaussian_blur(centre, 2 * edge + 1, heights[group], widths[group])

        # soft·(mask·face) + (1 − soft)·frame, as restore_cv2 (the products grouped to spare 3-channel passes)
        blended = torch.addcmul((1 - soft) * roi.permute(0, 3, 1, 2).float(), soft * mask, warped)
        blended = blended.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        blended = blended.cpu().numpy()  # the one download

        out = []
        for frame, (x0, y0, x1, y1), (h, w), b in zip(frames, boxes, sizes, blended):
            frame = frame.copy()
            if h and w:
                frame[y0:y1, x0:x1] = b[:h, :w]
            out.append(frame)
        return out
