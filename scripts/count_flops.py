"""FLOPs per frame per UNet call of the LatentSync architectures, next to the reference's numbers (§4.1).

Counted by torch's FlopCounterMode (matmuls, convolutions, attention; 2 FLOP per multiply-add; norms and
activations not counted) on the meta device: no weights, no memory, any machine. One call = one clip of
--frames frames without CFG (CFG doubles the cost per frame per step). The count is lipsync_lab.flops' — the one a
run's achieved TFLOP/s divide by (summary.json's "flops") — so the two agree.

The reference's numbers match the count without the attention-score products (QKᵀ and attention·V, which grow
with the square of the token count) — its count evidently left them out — so they are shown apart.

    python scripts/count_flops.py [--frames 16] [--norm latentsync|diffusers]
"""

from __future__ import annotations

import argparse

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lipsync_lab.config import compose
from lipsync_lab.flops import meta_unet, unet_flops

# (preset, latent size, reference GFLOP per frame)
CASES = [("latentsync_v1", 32, 169.6), ("latentsync_v15", 32, 244.5), ("latentsync_v16", 64, 975.0)]


class AttentionScoreFlops(TorchFunctionMode):
    """Adds up 2·(QKᵀ + attention·V) multiply-adds of every scaled_dot_product_attention call."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            self.flops += 2 * q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return func(*args, **(kwargs or {}))


def count(preset: str, latent: int, frames: int, norm: str) -> tuple[float, float]:
    """(all FLOPs, attention-score FLOPs) per frame of one call."""
    unet = meta_unet(compose([f"model={preset}", f"norm={norm}", f"batch_frames={frames}"]))
    with AttentionScoreFlops() as scores:  # one clip (copies = 1), the pipeline's UNet call
        total = unet_flops(unet, 1, frames, latent)
    return total / frames, scores.flops / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16, help="frames per call (the motion UNets take <= 24)")
    parser.add_argument("--norm", default="latentsync", choices=["latentsync", "diffusers"])
    args = parser.parse_args()
    print(f"GFLOP per frame per UNet call ({args.frames} frames per call, norm={args.norm})")
    print(f"{'model':<16} {'latent':>6} {'all':>8} {'QKᵀ+AV':>8} {'without':>8} {'reference':>10}")
    for preset, latent, reference in CASES:
        total, scores = (f / 1e9 for f in count(preset, latent, args.frames, args.norm))
        print(f"{preset:<16} {f'{latent}²':>6} {total:>8.1f} {scores:>8.1f} {total - scores:>8.1f} {reference:>10.1f}")


if __name__ == "__main__":
    main()
