"""Audio stage: the frame ↔ encoder-step mapping in absolute time, streaming vs offline, the log-mel front end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipsync_lab.audio.features import (StreamingAudioFeatures, cosine_drift, lookahead_frames,
                                        offline_features)
from lipsync_lab.audio.whisper import SAMPLES_PER_STEP, LogMel, WhisperFeatures
from lipsync_lab.media.demo import speech_like_audio
from lipsync_lab.media.source import SAMPLES_PER_FRAME

N_FRAMES = 100


def position_encoder(samples: np.ndarray) -> torch.Tensor:
    """Stand-in encoder: step j of its window outputs the value of the window's sample 320·j. Fed a ramp whose
    sample k has value k, every output row is the absolute sample position it came from — any shift shows."""
    n = len(samples) // SAMPLES_PER_STEP
    pos = torch.as_tensor(samples[: n * SAMPLES_PER_STEP: SAMPLES_PER_STEP].copy(), dtype=torch.float64)
    return pos[:, None, None].expand(n, 5, 3)


def stream(encoder, audio, n_frames, batch, left_context_s, lookahead_s):
    s = StreamingAudioFeatures(encoder, left_context_s)
    ahead = lookahead_frames(lookahead_s)
    pushed, out = 0, []
    for start in range(0, n_frames, batch):
        frames = list(range(start, min(n_frames, start + batch)))
        until = min(len(audio), (frames[-1] + 1 + ahead) * SAMPLES_PER_FRAME)
        s.push(audio[pushed:until], end=until >= len(audio))
        pushed = until
        out.append(s.features(frames))
    return torch.cat(out)


# hand-computed: frame i uses steps 2i-4 … 2i+5 clamped to [0, 2·N_FRAMES − 1]; value = 320 · step
EXPECTED_STEPS = {
    0: [0, 0, 0, 0, 0, 1, 2, 3, 4, 5],
    1: [0, 0, 0, 1, 2, 3, 4, 5, 6, 7],
    50: [96, 97, 98, 99, 100, 101, 102, 103, 104, 105],
    99: [194, 195, 196, 197, 198, 199, 199, 199, 199, 199],
}


@pytest.mark.parametrize("mode", ["offline", "stream_short_context", "stream_long_context"])
def test_frame_to_step_mapping_in_absolute_time(mode):
    ramp = np.arange(N_FRAMES * SAMPLES_PER_FRAME, dtype=np.float64)
    frames = list(range(N_FRAMES))
    if mode == "offline":
        feats = offline_features(position_encoder, ramp, frames)
    else:
        left = 0.3 if mode == "stream_short_context" else None
        feats = stream(position_encoder, ramp, N_FRAMES, 8, left, 0.1)
    assert feats.shape == (N_FRAMES, 50, 3)
    for frame, steps in EXPECTED_STEPS.items():
        got = feats[frame, :, 0].reshape(10, 5)[:, 0]  # (10 steps × 5 layers) → the steps
        assert got.tolist() == [SAMPLES_PER_STEP * s for s in steps], (mode, frame)


def test_stream_waits_for_its_look_ahead():
    s = StreamingAudioFeatures(position_encoder, 1.0)
    s.push(np.arange(8 * SAMPLES_PER_FRAME, dtype=np.float64))  # audio of frames 0–7 only
    with pytest.raises(RuntimeError, match="not received"):
        s.features(list(range(8)))  # frame 7 needs steps up to 19 = audio of frame 9
    s.push(np.arange(8 * SAMPLES_PER_FRAME, 10 * SAMPLES_PER_FRAME, dtype=np.float64))
    assert s.features(list(range(8))).shape == (8, 50, 3)


@pytest.fixture(scope="module")
def whisper():
    return WhisperFeatures.build(seed=0)


@pytest.fixture(scope="module")
def speech():
    return speech_like_audio(N_FRAMES / 25, seed=3)


def test_whisper_stack_shape(whisper, speech):
    feats = whisper(speech)
    assert feats.shape == (len(speech) // SAMPLES_PER_STEP, 5, 384)
    # five different tensors: stem and four blocks (a wrong hook would repeat one)
    assert all(not torch.allclose(feats[:, i], feats[:, i + 1]) for i in range(4))


def test_stream_with_whole_clip_up_front_equals_offline(whisper, speech):
    frames = list(range(N_FRAMES))
    offline = offline_features(whisper, speech, frames)
    s = StreamingAudioFeatures(whisper, left_context_s=None)
    s.push(speech, end=True)
    streamed = torch.cat([s.features(frames[i:i + 8]) for i in range(0, N_FRAMES, 8)])
    assert torch.equal(streamed, offline)


def test_true_streaming_drift_is_measured(whisper, speech, capsys):
    frames = list(range(N_FRAMES))
    offline = offline_features(whisper, speech, frames)
    report = {}
    for left in (0.5, 2.0):
        cos = cosine_drift(stream(whisper, speech, N_FRAMES, 8, left, 0.1), offline)
        assert cos.shape == (N_FRAMES,) and np.isfinite(cos).all()
        report[left] = cos
    # a true stream sees less audio than the offline pass: its features cannot all be identical
    assert min(c.min() for c in report.values()) < 0.999
    with capsys.disabled():
        for left, cos in report.items():
            print(f"\n[audio drift] left context {left} s: per-frame cosine to offline min {cos.min():.3f} "
                  f"median {np.median(cos):.3f} mean {cos.mean():.3f} (random whisper weights)")


def test_log_mel_matches_transformers_feature_extractor(speech):
    from transformers import WhisperFeatureExtractor

    audio = np.zeros(30 * 16000, np.float32)  # a full 30 s window: the extractor's padding is then a no-op
    audio[: len(speech)] = speech
    ref = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="np")
    ours = LogMel()(torch.from_numpy(audio)).numpy()
    np.testing.assert_allclose(ours, ref["input_features"][0], atol=2e-4)
