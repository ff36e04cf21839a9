"""`vad=silero`: voice activity of the streamed audio per batch span (Silero VAD v6 from faster-whisper)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("faster_whisper")

from lipsync_lab.audio.vad import WINDOW, SileroVAD  # noqa: E402
from lipsync_lab.errors import LipsyncInputError  # noqa: E402
from lipsync_lab.media.file import load_audio  # noqa: E402
from lipsync_lab.media.source import SAMPLE_RATE, SAMPLES_PER_FRAME  # noqa: E402

BATCH = 8 * SAMPLES_PER_FRAME      # a batch of 8 frames
LOOKAHEAD = 6 * SAMPLES_PER_FRAME  # the audio a batch waits for past its frames (audio.lookahead_s=0.1)


@pytest.fixture(scope="module")
def speech_then_silence(demo_audio) -> tuple[np.ndarray, int]:
    """The demo's 9.6 s of speech followed by 2 s of digital silence, and where the silence starts."""
    speech = load_audio(str(demo_audio))
    return np.concatenate([speech, np.zeros(2 * SAMPLE_RATE, np.float32)]), len(speech)


def stream(vad: SileroVAD, audio: np.ndarray, push: int = BATCH) -> list[bool]:
    """Each batch's answer as the pipeline asks it: the batch's audio plus the look-ahead pushed, then its span."""
    answers, pushed = [], 0
    for start in range(0, len(audio), BATCH):
        end = min(len(audio), start + BATCH)
        until = min(len(audio), end + LOOKAHEAD)
        while pushed < until:  # in pieces of `push` samples, whatever their size
            step = min(push, until - pushed)
            vad.push(audio[pushed:pushed + step])
            pushed += step
        answers.append(vad.has_speech(start, end))
    return answers


def test_speech_spans_have_speech_and_the_silence_has_none(speech_then_silence):
    audio, silence = speech_then_silence
    vad = SileroVAD(pad_ms=200)
    answers = stream(vad, audio)
    starts = np.arange(0, len(audio), BATCH)
    in_speech = answers[:silence // BATCH]
    assert np.mean(in_speech) > 0.85  # the talking head speaks throughout, with a few short pauses
    quiet = [a for a, s in zip(answers, starts) if s >= silence + vad.pad]  # beyond the padding's reach
    assert len(quiet) >= 4 and not any(quiet)
    vad2 = SileroVAD()
    vad2.push(audio[:3 * SAMPLE_RATE])
    assert vad2.has_speech(SAMPLE_RATE, 2 * SAMPLE_RATE)  # 1–2 s: mid-sentence


def test_silence_has_no_speech():
    rng = np.random.default_rng(0)
    for audio in (np.zeros(4 * SAMPLE_RATE, np.float32),  # digital silence
                  (1e-3 * rng.standard_normal(4 * SAMPLE_RATE)).astype(np.float32)):  # a quiet room's hiss
        assert not any(stream(SileroVAD(), audio))


def test_streamed_answers_are_the_whole_clips(speech_then_silence):
    """The LSTM state carried across pushes of any size gives faster-whisper's whole-clip probabilities exactly."""
    from faster_whisper.vad import get_vad_model

    audio, _ = speech_then_silence
    vad = SileroVAD(pad_ms=100)
    probs = get_vad_model()(np.pad(audio, (0, -len(audio) % WINDOW))).reshape(-1)
    flags, on = [], False
    for p in probs:  # Silero's hysteresis
        on = p >= (vad.neg_threshold if on else vad.threshold)
        flags.append(on)
    flags = np.array(flags)
    expected = [flags[max(0, s - vad.pad) // WINDOW:-(-min(len(audio), s + BATCH + vad.pad) // WINDOW)].any()
                for s in range(0, len(audio), BATCH)]
    assert stream(vad, audio) == expected
    assert stream(SileroVAD(pad_ms=100), audio, push=333) == expected  # pushes that split windows


def test_memory_stays_bounded_on_a_long_stream(speech_then_silence):
    audio, _ = speech_then_silence
    long = np.tile(audio, 16)  # ~3 minutes
    vad = SileroVAD()
    held = []
    pushed = 0
    for start in range(0, len(long), BATCH):
        until = min(len(long), start + BATCH + LOOKAHEAD)
        vad.push(long[pushed:until])
        pushed = until
        vad.has_speech(start, min(len(long), start + BATCH))
        held.append(vad.held_windows)
    # what one batch, its look-ahead and the padding either side span, not what the stream has seen
    bound = (BATCH + LOOKAHEAD + 2 * vad.pad) // WINDOW + 2
    assert max(held) <= bound and len(long) // WINDOW > 50 * bound
    assert len(vad._pending) < WINDOW


def test_questions_must_be_about_pushed_audio_in_order():
    vad = SileroVAD()
    vad.push(np.zeros(SAMPLE_RATE, np.float32))
    with pytest.raises(ValueError):
        vad.has_speech(0, SAMPLE_RATE + 1)
    assert not vad.has_speech(SAMPLE_RATE // 2, SAMPLE_RATE)
    with pytest.raises(ValueError):
        vad.has_speech(0, SAMPLE_RATE // 4)


def test_without_faster_whisper_it_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_whisper.vad", None)  # import fails as if not installed
    with pytest.raises(LipsyncInputError, match="faster-whisper"):
        SileroVAD()


def test_the_config_builds_it():
    from hydra.utils import instantiate

    from lipsync_lab.config import compose

    assert compose(["vad=none"]).vad.detector is None
    vad = instantiate(compose(["vad=silero"]).vad.detector)
    assert isinstance(vad, SileroVAD) and vad.threshold == 0.5
