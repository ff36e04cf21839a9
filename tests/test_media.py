"""Sources and sinks: 25-fps conformance, audio resampling, mp4 output, and bad input as one-line errors."""

from __future__ import annotations

import av
import numpy as np
import pytest

from conftest import SYNTHETIC_SECONDS, SYNTHETIC_SIZE, write_video
from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.media.demo import DemoSource
from lipsync_lab.media.mp4 import Mp4Sink
from lipsync_lab.media.file import FileSource
from lipsync_lab.media.source import SAMPLES_PER_FRAME, iter_batches


def level_frames(n, size=(64, 96)):
    """Flat frames whose grey level encodes their index (survives H.264)."""
    return [np.full((*size, 3), 4 * i + 8, np.uint8) for i in range(n)]


def test_real_clip_is_read_at_full_size(demo_video, demo_audio):
    src = FileSource(str(demo_video), str(demo_audio), max_frames=10)
    assert (src.width, src.height, src.n_frames) == (1080, 1920, 10)
    assert len(src.audio) == 10 * SAMPLES_PER_FRAME and src.audio.dtype == np.float32
    frames = list(src.frames())
    assert len(frames) == 10 and frames[0].shape == (1920, 1080, 3)


def test_video_audio_track_is_resampled_to_16k_mono(demo_video):
    src = FileSource(str(demo_video))  # 44.1 kHz stereo AAC in the file
    assert src.n_frames == 250 and len(src.audio) == 250 * SAMPLES_PER_FRAME
    assert 0.01 < np.abs(src.audio).mean() < 1.0


def test_synthetic_clip_is_read_at_its_size_with_the_demos_pixels(synthetic_clip):
    n = int(SYNTHETIC_SECONDS * 25)
    src = FileSource(str(synthetic_clip))
    assert (src.width, src.height, src.n_frames) == (SYNTHETIC_SIZE, SYNTHETIC_SIZE, n)
    frames = list(src.frames())
    demo = list(DemoSource(seconds=SYNTHETIC_SECONDS, size=SYNTHETIC_SIZE).frames())
    assert len(frames) == n and frames[0].shape == (SYNTHETIC_SIZE, SYNTHETIC_SIZE, 3) and frames[0].dtype == np.uint8
    # each frame is the demo frame of its index (H.264 at crf 18: ~2 levels), not a neighbour (head motion: more)
    assert all(np.abs(f.astype(int) - d).mean() < 3 for f, d in zip(frames, demo))
    assert np.abs(frames[10].astype(int) - demo[12]).mean() > np.abs(frames[10].astype(int) - demo[10]).mean() + 1


def test_the_videos_own_44k_stereo_track_becomes_the_demos_16k_mono_speech(synthetic_clip):
    src = FileSource(str(synthetic_clip))  # no audio file given: the clip's 44.1 kHz stereo AAC track
    speech = DemoSource(seconds=SYNTHETIC_SECONDS).audio
    assert src.audio.dtype == np.float32 and len(src.audio) == len(speech) == src.n_frames * SAMPLES_PER_FRAME
    # resampled 16 k → 44.1 k → 16 k through AAC: the same waveform, in time (no priming delay left in)
    assert np.corrcoef(src.audio, speech)[0, 1] > 0.99


@pytest.mark.parametrize("fps", [24, 30])
def test_other_frame_rates_are_conformed_to_25(tmp_path, fps):
    n = 2 * fps  # two seconds
    path = write_video(tmp_path / f"v{fps}.mp4", level_frames(n), fps=fps,
                       audio=np.zeros(2 * 44100, np.float32), rate=44100)
    src = FileSource(str(path))
    frames = list(src.frames())
    assert src.n_frames == len(frames) == 50
    got = [int(round((f.mean() - 8) / 4)) for f in frames]
    expected = [min(n - 1, int(np.floor(k * fps / 25 + 0.5))) for k in range(50)]  # nearest source frame
    assert all(abs(g - e) <= 1 for g, e in zip(got, expected)) and sum(g != e for g, e in zip(got, expected)) <= 2


def test_stereo_44k_audio_file_is_resampled(tmp_path):
    video = write_video(tmp_path / "v.mp4", level_frames(25), audio=np.zeros(16000, np.float32))
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)]).astype(np.float32) * 0.5
    audio = write_video(tmp_path / "a.mp4", level_frames(2), audio=stereo, rate=44100, layout="stereo")
    src = FileSource(str(video), str(audio))
    assert len(src.audio) == 25 * SAMPLES_PER_FRAME
    spectrum = np.abs(np.fft.rfft(src.audio[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 5  # still a 440 Hz tone after resampling


def test_batches_carry_audio_up_to_the_look_ahead():
    src = DemoSource(seconds=1.0)
    batches = list(iter_batches(src, 8, audio_lookahead_frames=3))
    assert [len(b.frames) for b in batches] == [8, 8, 8, 1]
    assert len(batches[0].new_audio) == 11 * SAMPLES_PER_FRAME
    assert np.array_equal(np.concatenate([b.new_audio for b in batches]), src.audio)
    assert [b.audio_ended for b in batches] == [False, False, True, True]


def test_mp4_sink_writes_frames_and_audio(tmp_path):
    frames = level_frames(20, (48, 80))
    audio = np.random.default_rng(0).uniform(-0.3, 0.3, 20 * SAMPLES_PER_FRAME).astype(np.float32)
    sink = Mp4Sink(str(tmp_path / "o.mp4"), 80, 48)
    for i in range(0, 20, 8):
        sink.write(frames[i:i + 8], audio[i * SAMPLES_PER_FRAME:(i + 8) * SAMPLES_PER_FRAME])
    sink.close()
    with av.open(str(tmp_path / "o.mp4")) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.width, v.height, v.average_rate) == (80, 48, 25)
        assert sum(1 for _ in c.decode(video=0)) == 20
        assert abs(float(a.duration * a.time_base) - 0.8) < 0.03
    assert not (tmp_path / "o.mp4.partial.mp4").exists()


# ---- bad input: one clear line naming the file and the problem --------------------------------------------------

def one_line(err: LipsyncInputError, path, *words):
    msg = str(err)
    assert "\n" not in msg and str(path) in msg, msg
    assert all(w in msg for w in words), msg


def test_missing_file(tmp_path):
    with pytest.raises(LipsyncInputError) as e:
        FileSource(str(tmp_path / "nope.mp4"))
    one_line(e.value, tmp_path / "nope.mp4", "not found")


@pytest.mark.parametrize("wav", ["demo_audio", "synthetic_speech"])
def test_file_without_video_stream(request, wav):
    wav = request.getfixturevalue(wav)
    with pytest.raises(LipsyncInputError) as e:
        FileSource(str(wav))
    one_line(e.value, wav, "no video stream")


def test_video_without_audio_and_no_audio_given(tmp_path):
    path = write_video(tmp_path / "silent.mp4", level_frames(10))
    with pytest.raises(LipsyncInputError) as e:
        FileSource(str(path))
    one_line(e.value, path, "no audio track", "source.audio")


def test_truncated_mp4_without_index(tmp_path):
    path = tmp_path / "cut.mp4"
    write_video(tmp_path / "full.mp4", level_frames(50), audio=np.zeros(32000, np.float32))
    data = (tmp_path / "full.mp4").read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the moov index sits at the end: it is gone
    with pytest.raises(LipsyncInputError) as e:
        FileSource(str(path))
    one_line(e.value, path, "truncated")


@pytest.mark.parametrize("clip", ["demo_video", "synthetic_clip"])
def test_truncated_mp4_with_index_first_is_not_silently_partial(tmp_path, request, clip):
    with av.open(str(request.getfixturevalue(clip))) as src, av.open(str(tmp_path / "fs.mp4"), "w",
                                                   options={"movflags": "faststart"}) as dst:
        vin, ain = src.streams.video[0], src.streams.audio[0]
        vout, aout = dst.add_stream_from_template(vin), dst.add_stream_from_template(ain)
        for packet in src.demux(vin, ain):
            if packet.dts is None:
                continue
            packet.stream = vout if packet.stream is vin else aout
            dst.mux(packet)
    data = (tmp_path / "fs.mp4").read_bytes()
    cut = tmp_path / "cut_fs.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    src = FileSource(str(cut))  # the index is intact, so it opens and promises every frame
    with pytest.raises(LipsyncInputError) as e:
        list(src.frames())
    one_line(e.value, cut, "truncated")


def test_unreadable_media(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(LipsyncInputError) as e:
        FileSource(str(junk))
    one_line(e.value, junk)


def test_odd_sized_frames_keep_their_size(tmp_path):
    """4:2:0 cannot hold odd sizes; the sink switches to 4:4:4 rather than cropping or padding."""
    sink = Mp4Sink(str(tmp_path / "odd.mp4"), 81, 49)
    sink.write([np.full((49, 81, 3), 100, np.uint8)] * 3, np.zeros(3 * SAMPLES_PER_FRAME, np.float32))
    sink.close()
    src = FileSource(str(tmp_path / "odd.mp4"))
    assert (src.width, src.height, src.n_frames) == (81, 49, 3)
    assert np.abs(next(iter(src.frames())).astype(int) - 100).max() <= 2
