"""How far each streamed audio front end drifts from upstream's offline whisper features, and what it costs
(a benchmark, not a test).

    python scripts/audio_drift.py [--audio speech.wav] [--seconds 8 38] [--seeds 5 | --checkpoint tiny.pt]

The speech: `--audio`, by default demo1_audio.wav in the data folder ($LIPSYNC_LAB_DATA, default ../shared/data),
else the embedded demo's synthetic speech written as a wav (said in one line).

For each `audio` option (and the pre-segment-alignment default, for reference) the audio is streamed the way a run
streams it — batches of 8 frames, the audio arriving with the frames plus the look-ahead — and the features are
compared with upstream's offline ones as this project computes them (WhisperFeatures: the whole clip at once, 30-s
segments, the same weights): relative L2 over all frames, and the per-frame cosine. Longer durations than the file
tile it. With random weights the numbers show how much the window changes the encoder's input, and they depend on
the draw: they are measured for `--seeds` weight seeds (0 … N−1, at least 5) and reported as the median and the
worst over them (largest rel L2, smallest cosine min), never one seed's. With OpenAI's tiny.pt (`--checkpoint`) the
weights are fixed and one run shows the real drift. The measuring is lipsync_lab.bench.audio_drift and
drift_over_seeds (notebook 03 plots one seed's).
"""

from __future__ import annotations

import argparse
import sys
import time

from lipsync_lab.audio.features import ContextWindow, lookahead_frames
from lipsync_lab.audio.whisper import WhisperFeatures
from lipsync_lab.bench import (AUDIO_OPTIONS, audio_drift, audio_front_ends, default_audio, drift_over_seeds,
                               load_speech)
from lipsync_lab.media.source import FPS

OPTIONS = [*AUDIO_OPTIONS[:2], "whisper_window audio.front_end.positions=window", *AUDIO_OPTIONS[2:]]
MIN_SEEDS = 5  # a drift on random weights is reported over at least this many weight seeds (median and worst)
OLD_DEFAULT = "old default: 5 s context, window positions"


def check_seeds(seeds: int | None, checkpoint: str | None) -> str | None:
    """Why `--seeds` is refused (None: it is fine). Random weights (no checkpoint) need at least MIN_SEEDS seeds;
    a checkpoint fixes the weights, so any count is fine (one run is made)."""
    if seeds is None:
        return None
    if checkpoint is None and seeds < MIN_SEEDS:
        return (f"--seeds {seeds}: a drift on random weights is reported over at least {MIN_SEEDS} weight seeds "
                f"(median and worst), never fewer; --checkpoint tiny.pt fixes the weights for one run")
    return f"--seeds {seeds}: at least 1" if seeds < 1 else None


def build_front_ends(options: list[str], checkpoint: str | None, seed: int):
    """The old default (for reference) and each option's front end, all on the weights of `checkpoint` or `seed`."""
    whisper = WhisperFeatures.build(checkpoint, seed)
    front_ends = {OLD_DEFAULT: ContextWindow(lambda samples, start: whisper(samples), 5.0)}
    built, skipped = audio_front_ends(options, checkpoint, seed)
    front_ends.update(built)
    return front_ends, skipped


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", help="speech file (default: the data folder's demo1_audio.wav, else the embedded "
                                    "demo's synthetic speech)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[8.0, 38.0], help="durations (the file is tiled)")
    ap.add_argument("--checkpoint", help="OpenAI whisper tiny.pt (fixed weights: one run)")
    ap.add_argument("--seeds", type=int, default=None,
                    help=f"random weight seeds 0 … N−1 (default and minimum {MIN_SEEDS}; not with --checkpoint)")
    ap.add_argument("--options", nargs="+", default=OPTIONS, help="audio options (+ overrides, space-separated)")
    ap.add_argument("--batch-frames", type=int, default=8)
    ap.add_argument("--lookahead-s", type=float, default=0.1)
    args = ap.parse_args(argv)
    why = check_seeds(args.seeds, args.checkpoint)
    if why:
        sys.exit(f"audio_drift.py: {why}")
    seeds = [0] if args.checkpoint else list(range(args.seeds or MIN_SEEDS))
    if args.checkpoint and (args.seeds or 1) > 1:
        print(f"--checkpoint fixes the weights: one run (--seeds {args.seeds} ignored)")

    speech = args.audio or default_audio()  # resolved once: the fallback's line is printed once
    tables = {seconds: {} for seconds in args.seconds}
    start = time.perf_counter()
    for seed in seeds:
        for seconds in args.seconds:
            # built afresh for each clip: SegmentAligned keeps completed segments across calls
            front_ends, skipped = build_front_ends(args.options, args.checkpoint, seed)
            if seed == seeds[0] and seconds == args.seconds[0]:
                for option, why in skipped.items():
                    print(f"{option}: skipped ({why})")
            audio = load_speech(speech, seconds)
            tables[seconds][seed], _ = audio_drift(audio, front_ends, args.checkpoint, args.batch_frames,
                                                   args.lookahead_s, seed)
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    weights = (f"weights {args.checkpoint}" if args.checkpoint else
               f"RANDOM weights, {len(seeds)} seeds ({seeds[0]}…{seeds[-1]}): median (worst) over the seeds")
    for seconds in args.seconds:
        print(f"\n{seconds:.0f} s ({int(seconds * FPS)} frames) of {speech}; batch "
              f"{args.batch_frames}, look-ahead {lookahead_frames(args.lookahead_s)} frames; {weights}")
        table = drift_over_seeds(tables[seconds])
        if args.checkpoint:
            print(f"{'front end':<48}{'rel L2':>8}{'cos min':>9}{'median':>8}{'mean':>8}{'ms/frame':>10}")
            for r in table.itertuples():
                print(f"{r.front_end:<48}{r.rel_l2:>8.3f}{r.cos_min:>9.3f}{r.cos_median:>8.3f}{r.cos_mean:>8.3f}"
                      f"{r.ms_per_frame:>10.2f}")
            continue
        print(f"{'front end':<48}{'seeds':>6}{'rel L2 (worst)':>16}{'cos min (worst)':>17}{'median':>8}{'mean':>8}"
              f"{'ms/frame':>10}")
        for r in table.itertuples():
            print(f"{r.front_end:<48}{r.seeds:>6}{f'{r.rel_l2:.3f} ({r.rel_l2_worst:.3f})':>16}"
                  f"{f'{r.cos_min:.3f} ({r.cos_min_worst:.3f})':>17}{r.cos_median:>8.3f}{r.cos_mean:>8.3f}"
                  f"{r.ms_per_frame:>10.2f}")


if __name__ == "__main__":
    main()
