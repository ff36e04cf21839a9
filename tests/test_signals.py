"""Every way a run ends leaves a known state: real signals sent to real `python -m lipsync_lab` processes.

The runs are `diffusion=passthrough` streams paced at 25 fps (the embedded demo): cheap, and slow enough in wall time
to be signalled mid-stream. Each test waits for the run's own printed batch blocks before signalling, so what is
asserted does not depend on this machine's speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from conftest import ROOT
from lipsync_lab.results import run_index

PACED = ["diffusion=passthrough", "source.pace=realtime", "batch_frames=8", "save_crops=0", "print_batches=true"]
TINY = ["model=tiny", "steps=1", "batch_frames=8", "save_crops=0", "print_batches=true", "vae=tiny"]


class Run:
    """A `python -m lipsync_lab` process whose stdout is read as it comes (to signal it at the right moment)."""

    def __init__(self, *args: str):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "lipsync_lab", *args], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, count: int = 1, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.lines) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} x{count} never printed; stderr: {self.proc.stderr.read()[-2000:]}"
                                     f"\nstdout: {''.join(self.lines)[-2000:]}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 120.0) -> tuple[int, str]:
        stderr = self.proc.stderr.read()
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code, stderr


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def mp4_frames_and_audio_s(path: Path) -> tuple[int, float]:
    with av.open(str(path)) as c:
        audio = c.streams.audio[0]
        frames = sum(1 for _ in c.decode(video=0))
        return frames, float(audio.duration * audio.time_base)


@pytest.mark.parametrize("signum,executor", [(signal.SIGINT, "sequential"), (signal.SIGTERM, "pipelined"),
                                             (getattr(signal, "SIGUSR2", signal.SIGTERM), "sequential")],
                         ids=["SIGINT-sequential", "SIGTERM-pipelined", "SIGUSR2-sequential"])
def test_a_signal_stops_the_run_at_a_batch_boundary_with_a_playable_output(tmp_path, signum, executor):
    # quality=syncnet: an interrupted run skips its quality step (whoever stopped it wants it to end now)
    run = Run(*PACED, "source.seconds=20", f"executor={executor}", "quality=syncnet", f"hydra.run.dir={tmp_path}")
    run.wait_for("processing completed", count=3)
    run.signal(signum)
    started = time.monotonic()
    code, stderr = run.finish()
    stopped_in = time.monotonic() - started

    assert code == 128 + signum, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"interrupted ({signal.Signals(signum).name})"), stderr
    assert "Traceback" not in stderr
    record = summary(tmp_path)
    s = record["summary"]
    assert record["status"] == "interrupted" and s["interrupted_by"] == signal.Signals(signum).name
    assert 3 * 8 <= s["frames_done"] < 500 and s["frames_done"] % 8 == 0  # whole batches, well before the end
    # every frame written so far, as a valid mp4 with its audio
    frames, audio_s = mp4_frames_and_audio_s(tmp_path / "output.mp4")
    assert frames == s["frames_done"]
    assert abs(audio_s - frames / 25) < 0.1
    assert not list(tmp_path.glob("*.partial.mp4")) and not (tmp_path / "partial").exists()
    assert (tmp_path / "timings.parquet").is_file() and s["batches_done"] == s["frames_done"] // 8
    assert "quality" not in s and (tmp_path / "face_boxes.npz").is_file()  # scorable later, from the folder
    assert stopped_in < 30, f"the stop took {stopped_in:.1f} s"
    index = run_index(tmp_path)
    assert index["status"].tolist() == ["interrupted"], index.to_string()
    assert index["error"][0].startswith(f"{signal.Signals(signum).name} after {s['frames_done']} of")


def test_a_second_signal_stops_at_once(tmp_path):
    # the tiny model's batches take seconds on a CPU: the second Ctrl-C lands inside one, before its boundary
    run = Run(*TINY, "source.seconds=20", f"hydra.run.dir={tmp_path}")
    run.wait_for("processing completed", count=2)
    run.signal(signal.SIGINT)
    run.wait_for("stopping after the batch being written")
    run.signal(signal.SIGINT)
    code, stderr = run.finish()
    assert code == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: SIGINT received twice: stopped at once"), stderr
    record = summary(tmp_path)
    assert record["status"] == "interrupted" and "output discarded" in record["error"]
    assert not (tmp_path / "output.mp4").exists()  # nothing that looks complete


def test_sigkill_leaves_nothing_that_looks_complete(tmp_path):
    run = Run(*PACED, "source.seconds=20", f"hydra.run.dir={tmp_path}")
    run.wait_for("processing completed", count=2)
    run.signal(signal.SIGKILL)
    run.finish()
    assert not (tmp_path / "output.mp4").exists()
    assert summary(tmp_path)["status"] == "running"
    index = run_index(tmp_path)
    assert index["status"].tolist() == ["incomplete"] and "killed" in index["error"][0]


def test_a_sweep_interrupted_in_its_second_job_keeps_the_first(tmp_path):
    run = Run("-m", *PACED, "source.seconds=20", "max_frames=16,480,480", f"hydra.sweep.dir={tmp_path}")
    run.wait_for("#1 : ")  # Hydra announces the second job
    run.wait_for("processing completed", count=2 + 2)  # job 0's two batches, then two of job 1's
    run.signal(signal.SIGINT)
    code, stderr = run.finish()
    assert code == 130, stderr
    assert "the sweep stopped there" in stderr and "Traceback" not in stderr
    index = run_index(tmp_path)
    assert index["status"].tolist() == ["ok", "interrupted"], index.to_string()
    first = Path(index["run_dir"][0])
    assert (first / "timings.parquet").is_file() and (first / "output.mp4").is_file()
    table = (tmp_path / "comparison.md").read_text()
    assert os.path.basename(index["run_dir"][1]) in table and "interrupted: SIGINT" in table
    assert "#2 : " not in "".join(run.lines)  # no third job was started


def test_a_sweep_with_a_failed_job_exits_non_zero_after_its_comparison(tmp_path):
    bad = tmp_path / "bad_unet.pt"
    bad.write_bytes(os.urandom(4096))
    r = subprocess.run([sys.executable, "-m", "lipsync_lab", "-m", "max_frames=8", "batch_frames=8", "steps=1",
                        "sink=none", "print_batches=false", "save_crops=0", f"model.checkpoint=null,{bad}",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "| run " in r.stdout and "failed: " in r.stdout  # the comparison came first, listing the failure
    assert r.stderr.strip().splitlines()[-1].startswith("error: 1 job(s) of the sweep did not finish")
    assert run_index(tmp_path / "sweep")["status"].tolist() == ["ok", "failed"]
