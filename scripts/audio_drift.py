"""How far streamed whisper features drift from the offline ones, per left context (a benchmark, not a test).

    python scripts/audio_drift.py [--audio ../shared/data/demo1_audio.wav] [--checkpoint whisper/tiny.pt]

Prints per-frame cosine similarity (streamed vs offline) for several left contexts. With random weights the
numbers show how much the window changes the encoder's input; with OpenAI's tiny.pt they show the real drift.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lipsync_lab.audio.features import StreamingAudioFeatures, cosine_drift, lookahead_frames, offline_features
from lipsync_lab.audio.whisper import WhisperFeatures
from lipsync_lab.media.demo import speech_like_audio
from lipsync_lab.media.file import fit_audio, load_audio
from lipsync_lab.media.source import FPS, SAMPLES_PER_FRAME, iter_batches


class _AudioOnly:
    def __init__(self, audio):
        self.audio, self.n_frames = audio, len(audio) // SAMPLES_PER_FRAME

    def frames(self):
        while True:
            yield None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", help="speech file (default: the embedded demo's synthetic speech, 10 s)")
    ap.add_argument("--checkpoint", help="OpenAI whisper tiny.pt")
    ap.add_argument("--batch-frames", type=int, default=8)
    ap.add_argument("--lookahead-s", type=float, default=0.1)
    ap.add_argument("--left", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 5.0])
    args = ap.parse_args()

    raw = load_audio(args.audio) if args.audio else speech_like_audio(10.0)
    audio = fit_audio(raw, len(raw) // SAMPLES_PER_FRAME, args.audio or "demo")
    encoder = WhisperFeatures.build(args.checkpoint)
    frames = list(range(len(audio) // SAMPLES_PER_FRAME))
    offline = offline_features(encoder, audio, frames)
    print(f"{len(frames)} frames ({len(frames) / FPS:.1f} s), batch {args.batch_frames}, look-ahead "
          f"{lookahead_frames(args.lookahead_s)} frames; cosine(streamed, offline) per frame:")
    print(f"{'left context s':>15}{'min':>8}{'p10':>8}{'median':>8}{'mean':>8}{'ms/batch':>10}")
    for left in args.left:
        stream = StreamingAudioFeatures(encoder, left)
        parts, start = [], time.perf_counter()
        for batch in iter_batches(_AudioOnly(audio), args.batch_frames, lookahead_frames(args.lookahead_s)):
            stream.push(batch.new_audio, end=batch.audio_ended)
            parts.append(stream.features(batch.frame_indices))
        ms = 1000 * (time.perf_counter() - start) / len(parts)
        cos = cosine_drift(torch.cat(parts), offline)
        print(f"{left:>15.1f}{cos.min():>8.3f}{np.percentile(cos, 10):>8.3f}{np.median(cos):>8.3f}"
              f"{cos.mean():>8.3f}{ms:>10.1f}")


if __name__ == "__main__":
    main()
