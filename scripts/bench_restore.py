"""Face crop (align) and paste-back (restore): OpenCV vs kornia (per-face ROI) vs kornia whole-frame, in ms per
frame (a benchmark: it prints, never asserts).

    python scripts/bench_restore.py [--video clip.mp4] [--short-sides 720 1080] [--batch 8]
                                    [--repeats 7] [--resolution 256] [--threads N] [--devices cpu cuda]

The clip: `--video`, by default demo1_video.mp4 in the data folder ($LIPSYNC_LAB_DATA, default ../shared/data), else
the embedded demo written as an mp4 (512², said in one line). Its first `batch` frames, resized by the file source's
`short_side`, their dlib landmarks and alignment matrices; then, per device (the CPU, and CUDA when present), one
batch through each method: a warm-up call, then the median of `repeats` timed calls (CUDA synchronised before each
clock read). The faces pasted back are the cv2 crops with the mouth region inverted, handed to restore as the
diffusion stage does: a tensor on the device. On CUDA, the cv2 rows include what the pipeline pays around them: the
upload of the cv2 crops to the device (align) and the download of the faces (restore). "× cv2" is the cv2 median
over the method's, from the same run (> 1 = faster than cv2). The measuring is
lipsync_lab.bench.align_restore_timings (notebook 02 plots it).
"""

from __future__ import annotations

import argparse
import os

import cv2
import torch

from lipsync_lab.bench import align_restore_timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", help="a talking-head clip (default: the data folder's demo1_video.mp4, else the "
                                    "embedded demo)")
    ap.add_argument("--short-sides", type=int, nargs="+", default=[720, 1080])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch and OpenCV CPU threads (default: torch's)")
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="cuda is skipped where unavailable")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cv2.setNumThreads(torch.get_num_threads())
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads (torch and cv2){gpu}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; batch {args.batch}, "
          f"{args.resolution}² crops, median of {args.repeats}")
    table = align_restore_timings(args.video, args.short_sides, args.batch, args.repeats, args.resolution,
                                  args.devices)
    for short_side in args.short_sides:
        if not (table["short_side"] == short_side).any():
            print(f"short side {short_side}: no face found")
    print(f"{'device':<7}{'size':>10}  {'stage':<8}{'method':<22}{'ms/frame':>10}{'× cv2':>8}")
    for r in table.itertuples():
        print(f"{r.device:<7}{r.size:>10}  {r.stage:<8}{r.method:<22}{r.ms_per_frame:>10.2f}{r.x_cv2:>8.2f}")


if __name__ == "__main__":
    main()
