"""How far each streamed audio front end drifts from upstream's offline whisper features, and what it costs
(a benchmark, not a test).

    python scripts/audio_drift.py [--audio ../shared/data/demo1_audio.wav] [--seconds 8 38] [--checkpoint tiny.pt]

For each `audio` option (and the pre-segment-alignment default, for reference) the audio is streamed the way a run
streams it — batches of 8 frames, the audio arriving with the frames plus the look-ahead — and the features are
compared with upstream's offline ones (the whole clip at once, 30-s segments): relative L2 over all frames, and the
per-frame cosine. Longer durations than the file tile it. With random weights the numbers show how much the window
changes the encoder's input; with OpenAI's tiny.pt they show the real drift.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lipsync_lab.audio.features import (ContextWindow, StreamingAudioFeatures, cosine_drift, lookahead_frames,
                                        offline_features)
from lipsync_lab.audio.whisper import WhisperFeatures
from lipsync_lab.build import build_audio_front_end
from lipsync_lab.config import compose
from lipsync_lab.media.demo import speech_like_audio
from lipsync_lab.media.file import load_audio
from lipsync_lab.media.source import FPS, SAMPLES_PER_FRAME, iter_batches

OPTIONS = ["whisper", "whisper_window", "whisper_window audio.front_end.positions=window", "faster_whisper"]


class _AudioOnly:
    def __init__(self, audio):
        self.audio, self.n_frames = audio, len(audio) // SAMPLES_PER_FRAME

    def frames(self):
        while True:
            yield None


def streamed(front_end, audio, batch_frames, lookahead_s) -> tuple[torch.Tensor, float]:
    """Features of every frame as a run streams them, and the milliseconds per frame they cost."""
    stream = StreamingAudioFeatures(front_end)
    parts, start = [], time.perf_counter()
    for batch in iter_batches(_AudioOnly(audio), batch_frames, lookahead_frames(lookahead_s)):
        stream.push(batch.new_audio, end=batch.audio_ended)
        parts.append(stream.features(batch.frame_indices))
    seconds = time.perf_counter() - start
    feats = torch.cat(parts)
    return feats, 1000 * seconds / len(feats)


def front_ends(options: list[str], checkpoint: str | None):
    """(label, front end) per option, built from the project's config like a run builds them."""
    whisper = WhisperFeatures.build(checkpoint)
    yield "old default: 5 s context, window positions", ContextWindow(lambda samples, start: whisper(samples), 5.0)
    for option in options:
        name, *overrides = option.split()
        try:
            cfg = compose([f"audio={name}", *overrides, f"audio.checkpoint={checkpoint or 'null'}"])
        except Exception as e:  # an option this install lacks (e.g. faster-whisper): say so, go on
            print(f"{option}: skipped ({type(e).__name__}: {e})")
            continue
        yield option, build_audio_front_end(cfg, torch.device("cpu"), torch.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", help="speech file (default: the embedded demo's synthetic speech)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[8.0, 38.0], help="durations (the file is tiled)")
    ap.add_argument("--checkpoint", help="OpenAI whisper tiny.pt")
    ap.add_argument("--options", nargs="+", default=OPTIONS, help="audio options (+ overrides, space-separated)")
    ap.add_argument("--batch-frames", type=int, default=8)
    ap.add_argument("--lookahead-s", type=float, default=0.1)
    args = ap.parse_args()

    raw = load_audio(args.audio) if args.audio else speech_like_audio(max(args.seconds))
    reference = WhisperFeatures.build(args.checkpoint)
    for seconds in args.seconds:
        n = int(seconds * FPS)
        audio = np.resize(raw, n * SAMPLES_PER_FRAME).astype(np.float32)  # tiles the file when it is shorter
        frames = list(range(n))
        offline = offline_features(reference, audio, frames)
        print(f"\n{seconds:.0f} s ({n} frames) of {args.audio or 'synthetic speech'}; batch {args.batch_frames}, "
              f"look-ahead {lookahead_frames(args.lookahead_s)} frames")
        print(f"{'front end':<48}{'rel L2':>8}{'cos min':>9}{'median':>8}{'mean':>8}{'ms/frame':>10}")
        for label, front_end in front_ends(args.options, args.checkpoint):
            feats, ms = streamed(front_end, audio, args.batch_frames, args.lookahead_s)
            rel = float((feats - offline).norm() / offline.norm())
            cos = cosine_drift(feats, offline)
            print(f"{label:<48}{rel:>8.3f}{cos.min():>9.3f}{np.median(cos):>8.3f}{cos.mean():>8.3f}{ms:>10.2f}")


if __name__ == "__main__":
    main()
