"""How far each streamed audio front end drifts from upstream's offline whisper features, and what it costs
(a benchmark, not a test).

    python scripts/audio_drift.py [--audio speech.wav] [--seconds 8 38] [--checkpoint tiny.pt]

The speech: `--audio`, by default demo1_audio.wav in the data folder ($LIPSYNC_LAB_DATA, default ../shared/data),
else the embedded demo's synthetic speech written as a wav (said in one line).

For each `audio` option (and the pre-segment-alignment default, for reference) the audio is streamed the way a run
streams it — batches of 8 frames, the audio arriving with the frames plus the look-ahead — and the features are
compared with upstream's offline ones (the whole clip at once, 30-s segments): relative L2 over all frames, and the
per-frame cosine. Longer durations than the file tile it. With random weights the numbers show how much the window
changes the encoder's input; with OpenAI's tiny.pt they show the real drift. The measuring is
lipsync_lab.bench.audio_drift (notebook 03 plots it).
"""

from __future__ import annotations

import argparse

from lipsync_lab.audio.features import ContextWindow, lookahead_frames
from lipsync_lab.audio.whisper import WhisperFeatures
from lipsync_lab.bench import AUDIO_OPTIONS, audio_drift, audio_front_ends, default_audio, load_speech
from lipsync_lab.media.source import FPS

OPTIONS = [*AUDIO_OPTIONS[:2], "whisper_window audio.front_end.positions=window", *AUDIO_OPTIONS[2:]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", help="speech file (default: the data folder's demo1_audio.wav, else the embedded "
                                    "demo's synthetic speech)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[8.0, 38.0], help="durations (the file is tiled)")
    ap.add_argument("--checkpoint", help="OpenAI whisper tiny.pt")
    ap.add_argument("--options", nargs="+", default=OPTIONS, help="audio options (+ overrides, space-separated)")
    ap.add_argument("--batch-frames", type=int, default=8)
    ap.add_argument("--lookahead-s", type=float, default=0.1)
    args = ap.parse_args()

    whisper = WhisperFeatures.build(args.checkpoint)
    front_ends = {"old default: 5 s context, window positions":
                  ContextWindow(lambda samples, start: whisper(samples), 5.0)}
    built, skipped = audio_front_ends(args.options, args.checkpoint)
    front_ends.update(built)
    for option, why in skipped.items():
        print(f"{option}: skipped ({why})")
    speech = args.audio or default_audio()  # resolved once: the fallback's line is printed once
    for seconds in args.seconds:
        audio = load_speech(speech, seconds)
        print(f"\n{seconds:.0f} s ({int(seconds * FPS)} frames) of {speech}; batch "
              f"{args.batch_frames}, look-ahead {lookahead_frames(args.lookahead_s)} frames")
        table, _ = audio_drift(audio, front_ends, args.checkpoint, args.batch_frames, args.lookahead_s)
        print(f"{'front end':<48}{'rel L2':>8}{'cos min':>9}{'median':>8}{'mean':>8}{'ms/frame':>10}")
        for r in table.itertuples():
            print(f"{r.front_end:<48}{r.rel_l2:>8.3f}{r.cos_min:>9.3f}{r.cos_median:>8.3f}{r.cos_mean:>8.3f}"
                  f"{r.ms_per_frame:>10.2f}")


if __name__ == "__main__":
    main()
