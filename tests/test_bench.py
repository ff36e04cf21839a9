"""lipsync_lab.bench (behind scripts/bench_restore.py, scripts/audio_drift.py and notebooks 02/03): the tables have
their rows and sane values, on a few real frames and a second of real speech (where the data folder has them) and on
the embedded demo written as files; the defaults fall back to the latter. Benchmarks measure; these tests check what
is measured, never how fast."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_lab import paths
from lipsync_lab.bench import (align_restore_timings, audio_drift, audio_front_ends, default_audio, default_video,
                               load_faces, load_speech, pixel_differences)
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
