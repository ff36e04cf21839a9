"""Audio stage: the frame ↔ encoder-step mapping in absolute time, streaming vs offline, the log-mel front end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipsync_lab.audio.features import (ContextWindow, SegmentAligned, SlidingWindow, StreamingAudioFeatures,
                                        cosine_drift, lookahead_frames, offline_features)
from lipsync_lab.audio.whisper import SAMPLES_PER_STEP, LogMel, WhisperFeatures
from lipsync_lab.media.demo import speech_like_audio
from lipsync_lab.media.source import SAMPLES_PER_FRAME

N_FRAMES = 100


def position_encoder(samples: np.ndarray, start_step: int = 0) -> torch.Tensor:
    """Stand-in encoder: step j of its window outputs the value of the window's sample 320·j. Fed a ramp whose
    sample k has value k, every output row is the absolute sample position it came from — any shift shows."""
    n = len(samples) // SAMPLES_PER_STEP
    pos = torch.as_tensor(samples[: n * SAMPLES_PER_STEP: SAMPLES_PER_STEP].copy(), dtype=torch.float64)
    return pos[:, None, None].expand(n, 5, 3)


def stream(front_end, audio, n_frames, batch, lookahead_s=0.1):
    s = StreamingAudioFeatures(front_end)
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
        feats = stream(ContextWindow(position_encoder, left), ramp, N_FRAMES, 8)
    assert feats.shape == (N_FRAMES, 50, 3)
    for frame, steps in EXPECTED_STEPS.items():
        got = feats[frame, :, 0].reshape(10, 5)[:, 0]  # (10 steps × 5 layers) → the steps
        assert got.tolist() == [SAMPLES_PER_STEP * s for s in steps], (mode, frame)


def test_stream_waits_for_its_look_ahead():
    s = StreamingAudioFeatures(ContextWindow(position_encoder, 1.0))
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


@pytest.fixture(scope="module")
def long_speech():
    """34 s: across one of upstream's 30-s segment boundaries."""
    return speech_like_audio(34.0, seed=4)


def up_front(front_end, audio, batch=8):
    """The whole clip pushed before the first batch (offline conditions), then streamed batch by batch."""
    s = StreamingAudioFeatures(front_end)
    s.push(audio, end=True)
    n = len(audio) // SAMPLES_PER_FRAME
    return torch.cat([s.features(list(range(i, min(n, i + batch)))) for i in range(0, n, batch)])


def test_exact_stream_with_whole_clip_up_front_equals_offline(whisper, long_speech):
    """audio=whisper: with all the audio there, segment-aligned windows, absolute positions and the running log-mel
    max give upstream's offline features — across the 30-s boundary too."""
    frames = list(range(len(long_speech) // SAMPLES_PER_FRAME))
    offline = offline_features(whisper, long_speech, frames)
    torch.testing.assert_close(up_front(SegmentAligned(whisper), long_speech), offline, rtol=1e-5, atol=1e-5)


def test_a_window_covering_the_whole_clip_equals_whisper(whisper, speech):
    """audio=whisper_window with a 30-s window is the exact path on a clip shorter than 30 s."""
    offline = offline_features(whisper, speech, list(range(N_FRAMES)))
    torch.testing.assert_close(up_front(SlidingWindow(whisper, window_s=30.0), speech), offline, rtol=1e-5,
                               atol=1e-5)


def test_true_streaming_drift_is_measured(whisper, speech, capsys):
    """Batches of 8 with 0.1 s of look-ahead, the audio arriving with the frames: each option's per-frame cosine to
    the offline features, reported; the exact option's windows see all the audio the segment has so far, the cheap
    one 2 s."""
    frames = list(range(N_FRAMES))
    offline = offline_features(whisper, speech, frames)
    report = {}
    for name, front_end in (("whisper (segment-aligned)", SegmentAligned(whisper)),
                            ("whisper_window 2 s", SlidingWindow(whisper, window_s=2.0)),
                            ("whisper_window 2 s, window positions", SlidingWindow(whisper, 2.0, positions="window"))):
        cos = cosine_drift(stream(front_end, speech, N_FRAMES, 8), offline)
        assert cos.shape == (N_FRAMES,) and np.isfinite(cos).all()
        report[name] = cos
    # a true stream sees less audio than the offline pass: its features cannot all be identical
    assert min(c.min() for c in report.values()) < 0.999
    # the exact option's only differences are unseen future audio and the running max: close to offline; the short
    # window keeps each step's place in its segment, which is most of what matters (restarting positions does not)
    assert np.median(report["whisper (segment-aligned)"]) > 0.99
    assert np.median(report["whisper_window 2 s"]) > 0.9 > np.median(report["whisper_window 2 s, window positions"])
    with capsys.disabled():
        for name, cos in report.items():
            print(f"\n[audio drift] {name}: per-frame cosine to offline min {cos.min():.3f} median {np.median(cos):.3f} "
                  f"mean {cos.mean():.3f} (random whisper weights, 4 s)")


def test_log_mel_matches_transformers_feature_extractor(speech):
    from transformers import WhisperFeatureExtractor

    audio = np.zeros(30 * 16000, np.float32)  # a full 30 s window: the extractor's padding is then a no-op
    audio[: len(speech)] = speech
    ref = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="np")
    ours = LogMel()(torch.from_numpy(audio)).numpy()
    np.testing.assert_allclose(ours, ref["input_features"][0], atol=2e-4)


def test_faster_whisper_with_an_official_unet_is_refused_unless_allowed():
    """CTranslate2 gives the final layer only, not the 5-layer stack LatentSync's UNets were trained on: with an
    official UNet checkpoint that is one clear line, unless the user asks for it explicitly."""
    from lipsync_lab.build import build_audio_front_end
    from lipsync_lab.config import compose
    from lipsync_lab.errors import LipsyncInputError

    cpu = torch.device("cpu")
    cfg = compose(["audio=faster_whisper", "model.checkpoint=checkpoints/latentsync_unet.pt"])
    with pytest.raises(LipsyncInputError, match=r"^audio: the FasterWhisperEncoder features are not the 5-layer "
                                                r"stack .* pass \+audio.allow_official_unet=true"):
        build_audio_front_end(cfg, cpu, torch.float32)
    allowed = compose(["audio=faster_whisper", "model.checkpoint=checkpoints/latentsync_unet.pt",
                       "+audio.allow_official_unet=true"])
    assert isinstance(build_audio_front_end(allowed, cpu, torch.float32), SlidingWindow)
    # the PyTorch encoder's stack is LatentSync's layout: no refusal
    assert build_audio_front_end(compose(["model.checkpoint=x.pt"]), cpu, torch.float32) is not None


def test_a_missing_optional_package_is_one_line(monkeypatch):
    """audio=faster_whisper without ctranslate2 installed: the option says what to install, no deep traceback."""
    import builtins

    from lipsync_lab.build import build_audio_front_end
    from lipsync_lab.config import compose
    from lipsync_lab.errors import LipsyncInputError

    real_import = builtins.__import__

    def without_ctranslate2(name, *args, **kwargs):
        if name == "ctranslate2":
            raise ImportError("No module named 'ctranslate2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_ctranslate2)
    with pytest.raises(LipsyncInputError, match=r"FasterWhisperEncoder.build: .* needs ctranslate2: pip install") as e:
        build_audio_front_end(compose(["audio=faster_whisper"]), torch.device("cpu"), torch.float32)
    assert "\n" not in str(e.value)
