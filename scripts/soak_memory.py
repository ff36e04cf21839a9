"""Soak: does resident memory stay flat over a long live stream? (a benchmark: it prints figures, asserts nothing)

    python scripts/soak_memory.py [--minutes 30] [--executor pipelined] [-- extra overrides…]

Streams the embedded demo paced at 25 fps through `diffusion=passthrough` (everything but the model: reading, landmarks,
audio features, paste-back, encoding, the executor, the per-batch records) for `--minutes`, with the fast CPU
options that keep such a stream up with real time on two cores, then fits resident memory (stream.parquet's
`rss_mb`, one reading per batch) against stream time. The first minute is left out of the fit (the allocator and
caches settling: `results.MEMORY_SLOPE_MIN_S`); the target is |slope| ≤ 0.1 MB/min. Also printed: the slope of each
half (a leak grows in both), the sustained fps and the latency growth (a stream that falls behind is not measuring
a live stream).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipsync_lab.config import run_config  # noqa: E402
from lipsync_lab.paths import RESULTS_DIR  # noqa: E402
from lipsync_lab.results import read_stream  # noqa: E402

FAST = ["face.detector.detect_every=10", "align.interpolation=cubic", "audio=whisper_window",
        "restore.interpolation=cubic", "sink.preset=ultrafast", "sink.convert=cv2"]


def slope_mb_per_min(t_s: np.ndarray, rss: np.ndarray) -> float:
    return float(np.polyfit(t_s, rss, 1)[0] * 60) if len(t_s) > 2 else float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--executor", default="pipelined", choices=["sequential", "pipelined"])
    ap.add_argument("--out", help="the run folder (default results/soak/<time>_<minutes>min)")
    ap.add_argument("extra", nargs="*", help="more overrides for the run")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS_DIR / "soak" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_" \
                                                                 f"{args.minutes:g}min"
    overrides = ["diffusion=passthrough", f"executor={args.executor}", "source.pace=realtime",
                 f"source.seconds={60 * args.minutes:g}", "print_batches=false", "save_crops=0", *FAST, *args.extra]
    print(f"soak: {args.minutes:g} min paced stream: {' '.join(overrides)}", flush=True)
    summary = run_config(overrides, out)

    stream = read_stream(out)
    t, rss = stream["written_s"].to_numpy(), stream["rss_mb"].to_numpy()
    settled = t >= 60.0
    half = t >= t[settled][0] + (t[-1] - t[settled][0]) / 2 if settled.any() else settled
    s = summary["stream"]
    print(f"\nsoak over {t[-1] / 60:.1f} min, {len(stream)} batches ({out}):")
    print(f"  sustained {s['sustained_fps']:.2f} fps; latency growth {s['latency_growth']:+.4f} s per s; "
          f"latency p50 {s['latency_p50_s']:.2f} / max {s['latency_max_s']:.2f} s")
    print(f"  resident memory: {rss[0]:.1f} MB at the first batch, {rss[settled][0] if settled.any() else rss[0]:.1f} "
          f"after 1 min, {rss[-1]:.1f} at the end, max {rss.max():.1f}")
    print(f"  slope after the first minute: {slope_mb_per_min(t[settled], rss[settled]):+.3f} MB/min "
          f"(first half {slope_mb_per_min(t[settled & ~half], rss[settled & ~half]):+.3f}, second half "
          f"{slope_mb_per_min(t[half], rss[half]):+.3f}); target |slope| <= 0.1")
    for start in (5, 15):  # where the growth is: a settling start shows as a steep first fit and flat later ones
        late = t >= 60 * start
        if late.sum() > 2:
            print(f"  from minute {start}: slope {slope_mb_per_min(t[late], rss[late]):+.3f} MB/min, resident memory "
                  f"within {rss[late].min():.1f}–{rss[late].max():.1f} MB")
    print(f"  process peak (ru_maxrss) {summary['memory']['rss_peak_mb']:.1f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
