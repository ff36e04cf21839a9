"""SyncNet, the audio-visual sync expert LatentSync evaluates with (LSE-C, LSE-D), and its scores.

The network is the two-stream `S` of upstream's `eval/syncnet/syncnet.py` (= joonson/syncnet_python's
SyncNetModel; reference: speed-and-quality.md): a 2-D CNN over 13 MFCC coefficients × 20 steps (0.2 s) and a 3-D CNN
over 5 frames (0.2 s at 25 fps) of a 224² BGR face crop, each ending in a 1024-d embedding. Its module names and
Sequential indices are upstream's, so the official `syncnet_v2.model` (a plain state dict) loads strictly.

Written here rather than imported: no maintained package ships this network (syncnet_python is a script folder, not
a package). The scores follow upstream's `SyncNetEval.evaluate`:
  - MFCC by python_speech_features (13 coefficients, 100 steps/s → 4 per video frame) on 16-bit-scale samples;
  - frame v pairs the lips of frames [v, v+5) with MFCC steps [4v, 4v+20), for v < frames − 5;
  - each frame's lip embedding is compared with the audio embeddings shifted by −vshift…+vshift (zero-padded at the
    ends); `mean_dists` = the mean distance per shift over frames;
  - LSE-D = min(mean_dists); LSE-C = median(mean_dists) − LSE-D; AV offset = vshift − argmin (positive: the lips of
    frame i best match the audio of frame i − offset, the video lags).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.media.source import FPS, SAMPLE_RATE
from lipsync_lab.weights import load_strict, read_checkpoint, rename, tensor_dict

LIP_FRAMES = 5          # video frames per window (0.2 s)
MFCC_PER_FRAME = 4      # 100 MFCC steps/s at 25 fps
MFCC_WINDOW = 20        # MFCC steps per window (0.2 s)
CROP = 224              # face crop side fed to the lip stream
EMBEDDING = 1024
assert SAMPLE_RATE // 100 * MFCC_PER_FRAME * FPS == SAMPLE_RATE  # 160-sample hop, 4 hops a frame

# (kind, out channels, kernel, stride, padding) per conv; ("pool", kernel, stride, padding). Each conv is followed
# by BatchNorm and ReLU; the tuple order reproduces upstream's Sequential indices (conv, bn, relu[, pool]).
_AUDIO = [("conv", 64, 3, 1, 1), ("pool", (1, 1), (1, 1), 0),
          ("conv", 192, 3, 1, 1), ("pool", (3, 3), (1, 2), 0),
          ("conv", 384, 3, 1, 1),
          ("conv", 256, 3, 1, 1),
          ("conv", 256, 3, 1, 1), ("pool", (3, 3), (2, 2), 0),
          ("conv", 512, (5, 4), 1, 0)]
_LIPS = [("conv", 96, (5, 7, 7), (1, 2, 2), 0), ("pool", (1, 3, 3), (1, 2, 2), 0),
         ("conv", 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
         ("conv", 256, (1, 3, 3), 1, (0, 1, 1)),
         ("conv", 256, (1, 3, 3), 1, (0, 1, 1)),
         ("conv", 256, (1, 3, 3), 1, (0, 1, 1)), ("pool", (1, 3, 3), (1, 2, 2), 0),
         ("conv", 512, (1, 6, 6), 1, 0)]


def _stream(spec: list[tuple], in_channels: int, dims: int) -> nn.Sequential:
    conv, norm, pool = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d,
                                                                                    nn.MaxPool3d)
    layers, channels = [], in_channels
    for kind, *args in spec:
        if kind == "conv":
            out, kernel, stride, padding = args
            layers += [conv(channels, out, kernel, stride, padding), norm(out), nn.ReLU(inplace=True)]
            channels = out
        else:
            kernel, stride, padding = args
            layers.append(pool(kernel, stride, padding))
    return nn.Sequential(*layers)


def _head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, EMBEDDING))


class SyncNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.netcnnaud = _stream(_AUDIO, 1, 2)
        self.netfcaud = _head()
        self.netfclip = _head()
        self.netcnnlip = _stream(_LIPS, 3, 3)

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) MFCC windows → (N, 1024)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) BGR windows, 0…255 (upstream feeds cv2's pixels unnormalised) → (N, 1024)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def random_syncnet(seed: int = 0) -> SyncNet:
    """Seeded random weights, in eval mode: for testing the code path, never for judging sync. BatchNorm's running
    statistics are drawn too, so the normalisation is exercised as with trained weights."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = SyncNet()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return net.eval()


def load_syncnet(path: str | Path) -> SyncNet:
    """The official `syncnet_v2.model` (LatentSync's checkpoints/auxiliary/): a pickled state dict, read with
    `weights_only` (a pickle may run code otherwise); a wrong or truncated file is one line (LipsyncInputError)."""
    sd = tensor_dict(read_checkpoint(path), path)
    # syncnet_python saves S's own state dict; a whole SyncNetInstance would prefix `__S__.`, DataParallel `module.`
    sd, origin = rename(sd, lambda k: k.removeprefix("module.").removeprefix("__S__."), path)
    net = SyncNet()
    load_strict(net, sd, origin, path, "SyncNet (syncnet_v2.model)")
    return net.eval()


def mfcc(audio: np.ndarray) -> np.ndarray:
    """(13, steps) MFCC of 16 kHz mono audio (float in [-1, 1] or int16), as upstream computes it: on the 16-bit
    integer scale that `wavfile.read` gives (the scale shifts the log energies, so it matters), 25 ms windows every
    10 ms — for a clip of T frames (T·640 samples) 4T − 1 steps."""
    import python_speech_features

    audio = np.asarray(audio)
    if audio.dtype != np.int16:
        audio = np.clip(np.round(audio.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    return python_speech_features.mfcc(audio, SAMPLE_RATE).T


def windows(n_frames: int, n_mfcc: int) -> int:
    """How many sync windows a clip of n_frames frames and n_mfcc MFCC steps gives: upstream's
    `lastframe = min(frames, samples // 640) − 5` (≥ 0); window v covers frames [v, v+5), MFCC [4v, 4v+20)."""
    frames = min(n_frames, (n_mfcc + 1) // MFCC_PER_FRAME)
    return max(0, frames - LIP_FRAMES)


def shift_distances(lips: torch.Tensor, audio: torch.Tensor, vshift: int = 15) -> torch.Tensor:
    """(n, 2·vshift+1): each frame's lip embedding against the audio embeddings of frames i − vshift … i + vshift
    (zeros beyond the ends, as upstream pads), by torch's pairwise_distance (its eps included)."""
    padded = F.pad(audio, (0, 0, vshift, vshift))
    span = 2 * vshift + 1
    shifted = padded.unfold(0, span, 1)[: len(lips)].transpose(1, 2)  # (n, span, d): frame i's candidates
    return F.pairwise_distance(lips[:, None, :].expand_as(shifted), shifted)


def sync_scores(lips: torch.Tensor, audio: torch.Tensor, vshift: int = 15) -> dict:
    """LSE-D, LSE-C and the AV offset of one face track's embeddings (n, d) each (module docstring)."""
    mean = shift_distances(lips.double(), audio.double(), vshift).mean(0)
    best = int(torch.argmin(mean))
    lse_d = float(mean[best])
    return dict(lse_c=float(torch.median(mean)) - lse_d, lse_d=lse_d, av_offset=vshift - best)


@torch.inference_mode()
def embed(net: SyncNet, crops_bgr: np.ndarray, coefficients: np.ndarray, device="cpu",
          batch: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """The lip and audio embeddings (n, 1024) each of one track: `crops_bgr` (T, 224, 224, 3) uint8, its MFCC
    (13, ≥ 4T − 1). Windows go through in batches of `batch` (upstream's default 20)."""
    n = windows(len(crops_bgr), coefficients.shape[1])
    device = torch.device(device)
    dtype = next(net.parameters()).dtype
    video = torch.from_numpy(np.ascontiguousarray(crops_bgr)).to(device).permute(3, 0, 1, 2)  # (3, T, H, W)
    cc = torch.from_numpy(np.ascontiguousarray(coefficients, np.float32)).to(device)
    lips, sound = [], []
    for start in range(0, n, batch):
        vs = range(start, min(n, start + batch))
        lips.append(net.forward_lip(torch.stack([video[:, v:v + LIP_FRAMES] for v in vs]).to(dtype)).float().cpu())
        mf = torch.stack([cc[:, MFCC_PER_FRAME * v:MFCC_PER_FRAME * v + MFCC_WINDOW] for v in vs])[:, None]
        sound.append(net.forward_aud(mf.to(dtype)).float().cpu())
    if not lips:
        return torch.zeros(0, EMBEDDING), torch.zeros(0, EMBEDDING)
    return torch.cat(lips), torch.cat(sound)


def check_file(path: str | Path | None, what: str) -> None:
    """A named weights file must exist before a run spends its stream on it (the run's config check)."""
    if path is not None and not Path(path).is_file():
        raise LipsyncInputError(path, f"no such file ({what})")
