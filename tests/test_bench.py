"""lipsync_lab.bench (behind scripts/bench_restore.py, scripts/audio_drift.py and notebooks 02/03): the tables have
their rows and sane values, on a few real frames and a second of real speech (where the data folder has them) and on
the embedded demo written as files; the defaults fall back to the latter. Benchmarks measure; these tests check what
is measured, never how fast."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from lipsync_lab import paths
from lipsync_lab.bench import (align_restore_timings, audio_drift, audio_front_ends, default_audio, default_video,
                               drift_over_seeds, load_faces, load_speech, pixel_differences)
from lipsync_lab.media.file import FileSource
from lipsync_lab.media.source import SAMPLES_PER_FRAME


def test_align_restore_timings_one_row_per_method(demo_video):
    table = align_restore_timings(demo_video, short_sides=[256], batch=2, repeats=1, devices=["cpu", "cuda"])
    cpu = table[table["device"] == "cpu"]
    assert len(cpu) == 6 and set(cpu["stage"]) == {"align", "restore"}
    assert cpu["size"].iloc[0] == "256×456" and (cpu["faces"] == 2).all()
    assert (table["ms_per_frame"] > 0).all()
    assert (cpu.groupby("stage")["x_cv2"].first() == 1.0).all()  # each stage's first row is cv2, the reference


def test_align_restore_timings_on_the_synthetic_clip(synthetic_clip):
    table = align_restore_timings(synthetic_clip, short_sides=[256], batch=2, repeats=1, devices=["cpu"])
    assert len(table) == 6 and set(table["stage"]) == {"align", "restore"}
    assert table["size"].iloc[0] == "256×256" and (table["faces"] == 2).all() and (table["ms_per_frame"] > 0).all()


@pytest.mark.parametrize("clip", ["demo_video", "synthetic_clip"])
def test_pixel_differences_are_small_inside_and_none_outside(request, clip):
    sample = load_faces(request.getfixturevalue(clip), short_side=360, n=1)
    diffs = pixel_differences(sample)
    assert diffs["crop_diff"].shape == (256, 256) and diffs["crop_cv2"].shape == (256, 256, 3)
    x0, y0, x1, y1 = diffs["box"]
    assert diffs["frame_diff"].shape == (y1 - y0, x1 - x0) == diffs["frame_cv2"].shape[:2]
    assert diffs["outside_max_abs"] == 0
    assert 0 < diffs["crop_mean_abs"] < 1.0 and 0 < diffs["roi_mean_abs"] < 1.0  # bicubic vs Lanczos: a fraction
    with pytest.raises(ValueError, match="have a face"):
        pixel_differences(sample, index=1)


@pytest.mark.parametrize("speech", ["demo_audio", "synthetic_speech"])
def test_load_speech_tiles_or_cuts_to_whole_frames(request, speech):
    demo_audio = request.getfixturevalue(speech)
    short = load_speech(demo_audio, seconds=0.48)
    assert short.dtype == np.float32 and len(short) == 12 * SAMPLES_PER_FRAME
    whole = load_speech(demo_audio)
    assert len(whole) % SAMPLES_PER_FRAME == 0
    long = load_speech(demo_audio, seconds=len(whole) / 16000 + 1.0)
    assert np.array_equal(long[len(whole):len(whole) + 100], whole[:100])  # tiled


@pytest.mark.parametrize("speech", ["demo_audio", "synthetic_speech"])
def test_audio_drift_streams_each_option_and_skips_what_cannot_be_built(request, speech):
    demo_audio = request.getfixturevalue(speech)
    front_ends, skipped = audio_front_ends(["whisper", "whisper_window", "no_such_option"])
    assert list(front_ends) == ["whisper", "whisper_window"] and list(skipped) == ["no_such_option"]
    audio = load_speech(demo_audio, seconds=0.96)
    table, cosine = audio_drift(audio, front_ends)
    assert list(table["front_end"]) == ["whisper", "whisper_window"] and list(cosine.columns) == list(front_ends)
    assert len(cosine) == 24 and (table["ms_per_frame"] > 0).all()
    whisper = table.set_index("front_end").loc["whisper"]
    assert whisper["cos_min"] > 0.99 and whisper["rel_l2"] < 0.05  # upstream's segments: close to offline
    assert table.set_index("front_end").loc["whisper_window", "rel_l2"] > whisper["rel_l2"]


def test_audio_drift_compares_with_the_offline_features_of_the_same_seed(demo_audio):
    """The front ends' random weights follow `seed`, and the offline reference is built with the same one: a
    mismatched reference would be far off."""
    audio = load_speech(demo_audio, seconds=0.96)
    front_ends, _ = audio_front_ends(["whisper"], seed=1)
    same, _ = audio_drift(audio, front_ends, seed=1)
    front_ends, _ = audio_front_ends(["whisper"], seed=1)  # afresh: a front end keeps completed segments
    other, _ = audio_drift(audio, front_ends, seed=0)
    assert same["rel_l2"].iloc[0] < 0.05 and other["rel_l2"].iloc[0] > 0.3  # (the sinusoidal positions are shared)


def test_drift_over_seeds_gives_the_median_and_the_worst():
    def table(rel_l2, cos_min):
        return pd.DataFrame(dict(front_end=["a", "b"], ms_per_frame=[1.0, 2.0], rel_l2=rel_l2, cos_min=cos_min,
                                 cos_median=[1.0, 0.9], cos_mean=[1.0, 0.9]))

    out = drift_over_seeds({0: table([0.1, 0.5], [0.9, 0.2]), 1: table([0.3, 0.4], [0.8, 0.6]),
                            2: table([0.2, 0.9], [0.7, 0.5])}).set_index("front_end")
    assert list(out.index) == ["a", "b"] and (out["seeds"] == 3).all()
    assert out.loc["a", "rel_l2"] == pytest.approx(0.2) and out.loc["a", "rel_l2_worst"] == pytest.approx(0.3)
    assert out.loc["b", "cos_min"] == pytest.approx(0.5) and out.loc["b", "cos_min_worst"] == pytest.approx(0.2)
    assert out.loc["b", "ms_per_frame"] == 2.0


def audio_drift_script():
    spec = importlib.util.spec_from_file_location("audio_drift_script", ROOT / "scripts" / "audio_drift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv", [["--seeds", "4"], ["--seeds", "1", "--seconds", "1"], ["--seeds", "0"]])
def test_audio_drift_script_refuses_fewer_than_5_seeds_on_random_weights(argv, monkeypatch, capsys):
    """A drift on random weights is never reported from fewer than 5 weight seeds: refused in one line, before
    anything is built or measured."""
    script = audio_drift_script()

    def must_not_run(*args, **kwargs):
        raise AssertionError("measured despite too few seeds")

    monkeypatch.setattr(script, "build_front_ends", must_not_run)
    monkeypatch.setattr(script, "audio_drift", must_not_run)
    with pytest.raises(SystemExit) as refused:
        script.main(argv)
    message = str(refused.value.code)
    assert "\n" not in message and "at least 5 weight seeds" in message and f"--seeds {argv[1]}" in message
    assert script.check_seeds(None, None) is None and script.check_seeds(5, None) is None  # the default, 5: fine
    assert script.check_seeds(1, "tiny.pt") is None  # a checkpoint fixes the weights: one run is fine


def test_defaults_are_the_data_folders_files(tmp_path, monkeypatch, capsys):
    (tmp_path / "demo1_video.mp4").write_bytes(b"x")
    (tmp_path / "demo1_audio.wav").write_bytes(b"x")
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path)
    assert default_video() == tmp_path / "demo1_video.mp4" and default_audio() == tmp_path / "demo1_audio.wav"
    assert capsys.readouterr().out == ""  # nothing to say


def test_defaults_fall_back_to_the_embedded_demo_and_say_so(tmp_path, monkeypatch, capsys):
    """Without the data folder: the demo written as files under the project's cache, made once, said in one line."""
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path / "no_data")
    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path / "cache")
    video, audio = default_video(), default_audio()
    assert video.parent == audio.parent == tmp_path / "cache" / "demo"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(f"not in {tmp_path / 'no_data'}" in line and paths.DATA_ENV in line and
                                   "embedded demo" in line for line in lines), lines
    src = FileSource(str(video))  # an mp4 with its speech as its own track
    assert (src.width, src.height, src.n_frames) == (512, 512, 100)
    assert len(load_speech(audio)) == 10 * 25 * SAMPLES_PER_FRAME
    made = video.stat().st_mtime_ns
    assert default_video() == video and video.stat().st_mtime_ns == made  # cached: not written again
    assert not [p for p in video.parent.iterdir() if "partial" in p.name]  # written under a temporary name
