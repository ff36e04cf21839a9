"""The stream as it happens: pacing, latency bookkeeping, re-ordering and failure of both executors, driven by a
deterministic fake clock and fake stages (no sleeps, no timing in the assertions beyond the fake clock's)."""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest
import torch

from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.executors.pipelined import PipelinedExecutor
from lipsync_lab.executors.sequential import SequentialExecutor
from lipsync_lab.executors.stream import StreamSettings
from lipsync_lab.media.pace import FakeClock, Pacer
from lipsync_lab.media.source import FPS, SAMPLES_PER_FRAME, iter_batches
from lipsync_lab.pipeline import BatchResult
from lipsync_lab.results import frame_latencies, stream_frame, stream_summary
from lipsync_lab.stopping import StopRequest

CPU = torch.device("cpu")


class FakeSource:
    name = "fake"
    width, height = 4, 4

    def __init__(self, n_frames: int, fail_at: int | None = None):
        self.n_frames = n_frames
        self.audio = np.zeros(n_frames * SAMPLES_PER_FRAME, np.float32)
        self.fail_at = fail_at

    def frames(self):
        for i in range(self.n_frames):
            if i == self.fail_at:
                raise LipsyncInputError("fake.mp4", f"truncated at frame {i}")
            yield np.full((4, 4, 3), i % 256, np.uint8)


class FakePipeline:
    """Four stages that each cost `cost[key]` seconds of the fake clock; `fail` = the stage key that raises."""

    def __init__(self, clock: FakeClock, cost: dict[str, float], fail: str | None = None):
        self.clock, self.cost, self.fail = clock, cost, fail
        self.done: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def stages(self):
        return [(key, lambda work, key=key: self._stage(key, work)) for key in ("face", "audio", "diffusion",
                                                                              "restore")]

    def finish(self, key):
        return []  # no stage holds batches back

    def _stage(self, key, work):
        with work.timer.stage(key):
            if key == self.fail:
                raise LipsyncInputError("stage", f"{key} failed")
            self.clock.advance(self.cost.get(key, 0.0))
        with self.lock:
            self.done.append((key, work.batch.index))
        if key == "restore":
            work.result = BatchResult([f + 1 for f in work.batch.frames], None, [])


class RecordingSink:
    def __init__(self, clock: FakeClock | None = None, cost: float = 0.0, fail_at: int | None = None):
        self.clock, self.cost, self.fail_at = clock, cost, fail_at
        self.frames: list[np.ndarray] = []
        self.closed = self.aborted = False
        self.path = None

    def write(self, frames, audio):
        if self.fail_at is not None and len(self.frames) >= self.fail_at:
            raise LipsyncInputError("out.mp4", "disk full")
        assert len(audio) == len(frames) * SAMPLES_PER_FRAME
        self.frames += frames
        if self.clock is not None:
            self.clock.advance(self.cost)

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


def stream(executor, source, pipeline, sink, *, batch_frames=4, lookahead=2, pace="none", warmup_batches=0,
           clock=None, stop=None, recorder=None):
    settings = StreamSettings(batch_frames=batch_frames, lookahead=lookahead, warmup_batches=warmup_batches,
                              device=CPU, sync=True, run_id="t", print_batches=False, pace=pace, stop=stop,
                              clock=clock)
    return executor.stream(source, pipeline, sink, settings, recorder)


def test_paced_batches_wait_for_their_last_frame_and_audio_lookahead():
    clock = FakeClock(100.0)
    pacer = Pacer("realtime", FPS, clock)
    batches = list(iter_batches(FakeSource(10), 4, 2, pacer))
    # frame i exists at (i + 1) / 25; a batch also waits for its look-ahead's frames (clamped at the end)
    assert [b.arrived_s for b in batches] == pytest.approx([6 / FPS, 10 / FPS, 10 / FPS])
    assert [b.waited_s for b in batches] == pytest.approx([6 / FPS, 4 / FPS, 0.0])
    assert [len(b.new_audio) for b in batches] == [6 * 640, 4 * 640, 0]
    assert batches[-1].audio_ended


def test_unpaced_batches_do_not_wait():
    clock = FakeClock()
    batches = list(iter_batches(FakeSource(10), 4, 2, Pacer("none", FPS, clock)))
    assert all(b.waited_s == 0 and b.arrived_s == 0 for b in batches)


def test_unknown_pace_is_one_line():
    with pytest.raises(LipsyncInputError, match="source.pace"):
        Pacer("fast", FPS)


def test_sequential_latency_bookkeeping_on_a_fake_clock():
    # each batch of 4 frames (0.16 s of media) costs 0.1 + 0.1 + 0.2 + 0.1 s of processing and 0.02 s of writing:
    # 0.52 s per batch, slower than real time, so latency grows
    clock = FakeClock()
    pipe = FakePipeline(clock, dict(face=0.1, audio=0.1, diffusion=0.2, restore=0.1))
    sink = RecordingSink(clock, cost=0.02)
    result = stream(SequentialExecutor(), FakeSource(12), pipe, sink, pace="realtime", lookahead=2, clock=clock)
    df = stream_frame(result.recorder.batches)
    # batch 0 arrives at 6/25 (4 frames + 2 look-ahead), is processed 0.5 s, written 0.02 s later
    assert df["arrived_s"].tolist() == pytest.approx([6 / FPS, 0.24 + 0.52, 0.76 + 0.52])  # later ones: no wait
    assert df["written_s"].tolist() == pytest.approx([0.76, 1.28, 1.80])
    assert df["started_s"].tolist() == pytest.approx([0.24, 0.76, 1.28])
    assert df["finished_s"].tolist() == pytest.approx([0.74, 1.26, 1.78])
    lat = frame_latencies(df)
    assert lat["latency_s"].tolist()[:4] == pytest.approx([0.76 - i / FPS for i in range(1, 5)])
    s = stream_summary(df)
    assert s["first_frame_latency_s"] == pytest.approx(0.72)
    assert s["sustained_fps"] == pytest.approx(8 / (1.80 - 0.76))
    # it falls behind: each 0.16 s of input takes 0.52 s, so latency gains 0.36 s per 0.16 s of stream
    assert s["latency_growth"] == pytest.approx(0.36 / 0.16)
    rows = {(r["batch"], r["stage"]): r for r in result.recorder.rows}
    assert rows[(1, "diffusion")]["seconds"] == pytest.approx(0.2)
    assert rows[(0, "write")]["seconds"] == pytest.approx(0.02)
    assert sink.closed and [int(f[0, 0, 0]) for f in sink.frames] == [i + 1 for i in range(12)]


def test_a_stream_that_keeps_up_has_flat_latency():
    clock = FakeClock()
    pipe = FakePipeline(clock, dict(diffusion=0.1))  # 0.1 s per 0.16 s of media
    result = stream(SequentialExecutor(), FakeSource(40), pipe, RecordingSink(), pace="realtime", lookahead=0,
                    clock=clock)
    s = stream_summary(stream_frame(result.recorder.batches))
    assert s["latency_growth"] == pytest.approx(0.0, abs=1e-9)
    assert s["sustained_fps"] == pytest.approx(FPS)
    assert s["latency_max_s"] == pytest.approx(0.1 + 3 / FPS)  # a batch's first frame waits for its last one
    assert s["rss_slope_mb_per_min"] is None  # 1.6 s of stream: too short for a memory trend


def test_memory_slope_is_fitted_over_long_streams():
    n = 400  # 2 minutes of 8-frame batches, resident memory rising 1.5 MB a minute on a noisy floor
    t = np.arange(n) * 8 / FPS
    noise = np.random.default_rng(0).normal(0, 0.2, n)
    records = [dict(run_id="t", batch=i, first_frame=8 * i, frames=8, warmup=i == 0, paced=True, arrived_s=t[i],
                    waited_s=0.0, started_s=t[i], finished_s=t[i] + 0.1, written_s=t[i] + 0.1, skipped="",
                    rss_mb=700 + 1.5 * t[i] / 60 + noise[i]) for i in range(n)]
    assert stream_summary(stream_frame(records))["rss_slope_mb_per_min"] == pytest.approx(1.5, abs=0.05)


def test_pipelined_hands_batches_on_in_stream_order():
    # restore on two workers; batch 0's restore cannot finish before batch 1's has: without the re-ordering step
    # the writer would see batch 1 first
    clock = FakeClock()
    pipe = FakePipeline(clock, {})
    one_restored = threading.Event()
    inner = pipe._stage

    def stage(key, work):
        if key == "restore" and work.batch.index == 0:
            assert one_restored.wait(10), "batch 1's restore never ran beside batch 0's"
        inner(key, work)
        if key == "restore" and work.batch.index == 1:
            one_restored.set()

    pipe._stage = stage
    sink = RecordingSink()
    result = stream(PipelinedExecutor(queue_batches=2, restore_workers=2), FakeSource(16), pipe, sink, clock=clock)
    assert ("restore", 1) in pipe.done and pipe.done.index(("restore", 1)) < pipe.done.index(("restore", 0))
    assert [int(f[0, 0, 0]) for f in sink.frames] == [i + 1 for i in range(16)]
    assert [b["batch"] for b in result.recorder.batches] == [0, 1, 2, 3] and sink.closed


@pytest.mark.parametrize("executor", ["sequential", "pipelined"])
@pytest.mark.parametrize("where", ["read", "face", "audio", "diffusion", "restore", "write"])
def test_a_failing_stage_stops_the_stream_with_its_error(executor, where):
    before = set(threading.enumerate())
    clock = FakeClock()
    source = FakeSource(24, fail_at=9 if where == "read" else None)
    pipe = FakePipeline(clock, {}, fail=where if where not in ("read", "write") else None)
    sink = RecordingSink(fail_at=8 if where == "write" else None)
    ex = SequentialExecutor() if executor == "sequential" else PipelinedExecutor()
    with pytest.raises(LipsyncInputError) as info:
        stream(ex, source, pipe, sink, clock=clock)
    assert "\n" not in str(info.value)
    assert sink.aborted and not sink.closed  # nothing that looks complete
    assert set(threading.enumerate()) <= before, "a worker thread outlived the stream"


class StoppingSink(RecordingSink):
    """Asks the stream to stop (as a signal handler would) once it has taken `after` frames."""

    def __init__(self, stop: StopRequest, after: int):
        super().__init__()
        self.stop, self.after = stop, after

    def write(self, frames, audio):
        super().write(frames, audio)
        if len(self.frames) >= self.after:
            self.stop.set(signal.SIGTERM)


@pytest.mark.parametrize("executor", ["sequential", "pipelined"])
def test_a_stop_request_ends_the_stream_at_a_batch_boundary_with_what_was_written(executor):
    clock, stop = FakeClock(), StopRequest()
    pipe = FakePipeline(clock, dict(diffusion=0.1))
    sink = StoppingSink(stop, after=8)  # asked during batch 1's write: batch 1 is the last one written
    ex = SequentialExecutor() if executor == "sequential" else PipelinedExecutor(queue_batches=1)
    result = stream(ex, FakeSource(40), pipe, sink, clock=clock, stop=stop)
    assert sink.closed and not sink.aborted  # a complete output of the frames written
    assert len(sink.frames) == 8 and [int(f[0, 0, 0]) for f in sink.frames] == [i + 1 for i in range(8)]
    assert (result.frames, result.batches, result.interrupted) == (8, 2, "SIGTERM")
    assert [b["batch"] for b in result.recorder.batches] == [0, 1]
    if executor == "sequential":  # nothing past the boundary was processed
        assert max(i for _, i in pipe.done) == 1


def test_a_stop_before_the_first_batch_writes_nothing():
    stop = StopRequest()
    stop.set()
    sink = RecordingSink()
    result = stream(SequentialExecutor(), FakeSource(8), FakePipeline(FakeClock(), {}), sink, stop=stop)
    assert sink.aborted and not sink.closed and result.frames == 0 and result.interrupted == "SIGINT"


def _stream_real(executor, cfg, source_cfg):
    from lipsync_lab.build import build_pipeline, build_source

    source = build_source(source_cfg)
    pipeline = build_pipeline(cfg, source, CPU, torch.float32)
    sink = RecordingSink()
    try:
        result = stream(executor, source, pipeline, sink, batch_frames=cfg.batch_frames, lookahead=2)
    finally:
        pipeline.close()
    return sink.frames, result


@pytest.mark.parametrize("clip,speech", [("demo_video", "demo_audio"), ("synthetic_clip", None)],
                         ids=["real", "synthetic"])
def test_pipelined_output_equals_sequential_output(request, clip, speech):
    from lipsync_lab.config import compose

    audio = [f"source.audio={request.getfixturevalue(speech)}"] if speech else []  # None: the clip's own track
    cfg = compose(["source=file", f"source.video={request.getfixturevalue(clip)}", *audio, "source.short_side=360",
                   "max_frames=20", "batch_frames=8", "steps=1", "vae=tiny"])
    seq, _ = _stream_real(SequentialExecutor(), cfg, cfg)
    pip, result = _stream_real(PipelinedExecutor(queue_batches=1), cfg, cfg)
    assert len(seq) == len(pip) == 20
    assert all(np.array_equal(a, b) for a, b in zip(seq, pip))
    assert [b["batch"] for b in result.recorder.batches] == [0, 1, 2]
    # diffusion ran (the tiny model's random weights change the mouth), so the equality is not trivially of inputs
    assert {r["skipped"] for r in result.recorder.rows} == {""}


def test_vad_skips_a_silent_batch(tmp_path, demo_video, demo_audio):
    """The demo's speech for 16 frames, then silence: the silent batch passes through unchanged, diffusion skipped
    and recorded as skipped ("silent"), while the speech batches are lip-synced."""
    pytest.importorskip("faster_whisper", reason="vad=silero runs the Silero model shipped in faster-whisper")
    from scipy.io import wavfile

    from lipsync_lab.config import compose
    from lipsync_lab.media.file import FileSource

    speech = FileSource(str(demo_video), str(demo_audio), max_frames=60).audio[25 * 640:41 * 640]  # 1.0–1.64 s
    audio = np.concatenate([speech, np.zeros(16 * 640, np.float32)])  # 32 frames: 16 spoken, 16 silent
    wav = tmp_path / "speech_then_silence.wav"
    wavfile.write(wav, 16000, audio)
    cfg = compose(["source=file", f"source.video={demo_video}", f"source.audio={wav}", "source.short_side=360",
                   "max_frames=32", "batch_frames=8", "steps=1", "vae=tiny", "vad=silero"])
    frames, result = _stream_real(SequentialExecutor(), cfg, cfg)
    skipped = {r["batch"]: r["skipped"] for r in result.recorder.rows if r["stage"] == "diffusion"}
    diffusion_s = {r["batch"]: r["seconds"] for r in result.recorder.rows if r["stage"] == "diffusion"}
    # batch 2 starts 0 s after the speech (within the 200 ms pad: counted as speech); batch 3 is 0.32 s past it
    assert skipped == {0: "", 1: "", 2: "", 3: "silent"}
    assert diffusion_s[3] == 0.0 and diffusion_s[0] > 0
    source = FileSource(str(demo_video), str(wav), max_frames=32, short_side=360)
    inputs = list(source.frames())
    assert all(np.array_equal(frames[i], inputs[i]) for i in range(24, 32))  # passed through unchanged
    assert not np.array_equal(frames[0], inputs[0])                          # lip-synced


def test_a_paced_pipelined_run_writes_its_stream(tmp_path):
    import json

    import pandas as pd

    from lipsync_lab.config import compose
    from lipsync_lab.run import run

    cfg = compose(["diffusion=passthrough", "executor=pipelined", "source.pace=realtime", "source.seconds=1.28",
                   "batch_frames=8", "sink=none", "print_batches=false"])
    summary = run(cfg, tmp_path)
    stream = pd.read_parquet(tmp_path / "stream.parquet")
    assert stream["batch"].tolist() == list(range(4)) and stream["paced"].all()
    # a paced batch exists once its last frame and its audio look-ahead (0.1 s: 3 frames) were captured
    assert (stream["arrived_s"] >= (stream["first_frame"] + 8 + 3).clip(upper=32) / FPS - 1e-6).all()
    assert (stream["started_s"] >= stream["arrived_s"] - 1e-6).all()
    assert (stream["written_s"] >= stream["finished_s"]).all() and (stream["rss_mb"] > 0).all()
    lat = frame_latencies(stream)
    assert len(lat) == 32 and (lat["latency_s"] > 0).all()
    s = json.loads((tmp_path / "summary.json").read_text())["summary"]["stream"]
    assert s == summary["stream"] and s["paced"] and s["first_frame_latency_s"] == pytest.approx(lat["latency_s"][0])
    assert summary["executor"] == "PipelinedExecutor" and "diffusion=passthrough" in cfg.variant
    assert "source.pace=realtime" in cfg.variant  # pacing changes what a run measures: it is in the name
