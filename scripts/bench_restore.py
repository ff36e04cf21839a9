"""Face crop (align) and paste-back (restore): OpenCV vs kornia (per-face ROI) vs kornia whole-frame, in ms per
frame (a benchmark: it prints, never asserts).

    python scripts/bench_restore.py [--video ../shared/data/demo1_video.mp4] [--short-sides 720 1080] [--batch 8]
                                    [--repeats 7] [--resolution 256] [--threads N] [--devices cpu cuda]

The first `batch` frames of the clip, resized by the file source's `short_side`, their dlib landmarks and alignment
matrices; then, per device (the CPU, and CUDA when present), one batch through each method: a warm-up call, then
the median of `repeats` timed calls (CUDA synchronised before each clock read). The faces pasted back are the
cv2 crops with the mouth region inverted, handed to restore as the diffusion stage does: a tensor on the device.
On CUDA, the cv2 rows include what the pipeline pays around them: the upload of the cv2 crops to the device
(align) and the download of the faces (restore). "× cv2" is the cv2 median over the method's, from the same run
(> 1 = faster than cv2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import cv2
import torch

from lipsync_lab.face.align import alignment_matrix, warp_faces_cv2
from lipsync_lab.face.kornia import KorniaAlign, KorniaRestore
from lipsync_lab.face.landmarks import LandmarkDetector
from lipsync_lab.face.restore import restore_faces_cv2
from lipsync_lab.media.file import FileSource

ROOT = Path(__file__).resolve().parents[1]


def load(video: str, short_side: int, n: int, resolution: int):
    """n frames at `short_side`, the matrices of those with a face, and generated-looking faces for them."""
    source = FileSource(video, max_frames=n, short_side=short_side)
    detector = LandmarkDetector()
    frames, matrices = [], []
    for i, frame in enumerate(source.frames()):
        landmarks = detector(frame, i)
        if landmarks is not None:
            frames.append(frame)
            matrices.append(alignment_matrix(landmarks, resolution))
    faces = warp_faces_cv2(frames, matrices, resolution)
    r = resolution / 256
    faces[:, int(150 * r):int(220 * r), int(70 * r):int(190 * r)] ^= 0xFF  # an altered mouth, so the paste shows
    return frames, matrices, faces


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up (allocations, first-call costs)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def methods(device: torch.device, frames, matrices, faces, resolution: int):
    """(stage, method, callable) for one batch on `device`."""
    faces_dev = torch.from_numpy(faces).to(device)
    upload = device.type != "cpu"

    def cv2_align():
        crops = warp_faces_cv2(frames, matrices, resolution)
        return torch.from_numpy(crops).to(device) if upload else crops

    align_roi, align_full = KorniaAlign(device=str(device)), KorniaAlign(device=str(device), full_frame=True)
    restore_roi, restore_full = KorniaRestore(device=str(device)), KorniaRestore(device=str(device), full_frame=True)
    return [
        ("align", "cv2" + (" (+upload)" if upload else ""), cv2_align),
        ("align", "kornia roi", lambda: align_roi(frames, matrices, resolution)),
        ("align", "kornia full_frame", lambda: align_full(frames, matrices, resolution)),
        ("restore", "cv2" + (" (+download)" if upload else ""), lambda: restore_faces_cv2(frames, faces_dev, matrices)),
        ("restore", "kornia roi", lambda: restore_roi(frames, faces_dev, matrices)),
        ("restore", "kornia full_frame", lambda: restore_full(frames, faces_dev, matrices)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", default=str(ROOT.parent / "shared" / "data" / "demo1_video.mp4"))
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
    devices = [torch.device(d) for d in args.devices if d != "cuda" or torch.cuda.is_available()]
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads (torch and cv2){gpu}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; batch {args.batch}, "
          f"{args.resolution}² crops, median of {args.repeats}")
    print(f"{'device':<7}{'size':>10}  {'stage':<8}{'method':<22}{'ms/frame':>10}{'× cv2':>8}")
    for short_side in args.short_sides:
        frames, matrices, faces = load(args.video, short_side, args.batch, args.resolution)
        k = len(frames)
        size = f"{frames[0].shape[1]}×{frames[0].shape[0]}" if k else "-"
        if not k:
            print(f"short side {short_side}: no face found")
            continue
        for device in devices:
            base = {}
            for stage, name, fn in methods(device, frames, matrices, faces, args.resolution):
                seconds = median_seconds(fn, device, args.repeats)
                base.setdefault(stage, seconds)
                print(f"{device.type:<7}{size:>10}  {stage:<8}{name:<22}{1000 * seconds / k:>10.2f}"
                      f"{base[stage] / seconds:>8.2f}")


if __name__ == "__main__":
    main()
