"""A sweep over input files names each job's folder (and so its comparison row) by the file it read (issue #14):
override_dirname leaves path keys out, so jobs over several clips differed only by their job number."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from scipy.io import wavfile

from conftest import ROOT, write_video
from lipsync_lab.media.demo import DemoSource

TINY = ["diffusion=passthrough", "sink=none", "max_frames=4", "batch_frames=4", "print_batches=false", "save_crops=0"]


def lab(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=600)


def clip(path):
    """4 frames of the embedded demo (a face for dlib: passthrough still aligns and restores) with its speech."""
    demo = DemoSource(seconds=0.16, size=256, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, list(demo.frames()), audio=demo.audio)


def table_rows(md: str) -> list[list[str]]:
    """The body rows' cells of the Markdown table at the top of comparison.md."""
    lines = md.split("\n")
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])] for line in lines[2:lines.index("")]]


def test_a_sweep_over_videos_names_each_job_by_its_video(tmp_path):
    # two folders, so the paths hold slashes the names must not; stems with a character _token replaces
    a = clip(tmp_path / "in" / "a" / "talk one.mp4")
    b = clip(tmp_path / "in" / "b" / "talk_two.mp4")
    sweep = tmp_path / "sweep"
    r = lab("lipsync_lab", "-m", "source=file", f"source.video={a},{b}", "steps=1,2", *TINY,
            f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted((p.name for p in sweep.iterdir() if p.is_dir()), key=lambda n: int(n.split("_", 1)[0]))
    assert len(jobs) == 4, jobs
    for name in jobs:
        assert "/" not in name and re.fullmatch(r"[A-Za-z0-9._=+,-]+", name), name
    # Hydra's order: the last swept key varies fastest (steps=1,2 per video); the input file comes after the
    # override_dirname, as `video=<stem>`
    for i, (name, (stem, steps)) in enumerate(zip(jobs, [("talk_one", 1), ("talk_one", 2), ("talk_two", 1),
                                                         ("talk_two", 2)], strict=True)):
        num, tokens = name.split("_", 1)[0], name.split("_", 1)[1].split(",")
        assert num == str(i) and tokens[-1] == f"video={stem}" and f"steps={steps}" in tokens, name
        assert "diffusion=passthrough" in tokens and not any(t.startswith("source") for t in tokens), name
    # without the job number every folder is still a different name
    assert len({name.split("_", 1)[1] for name in jobs}) == 4

    r = lab("lipsync_lab.compare", sweep)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [row[0].removesuffix(" *") for row in table_rows((sweep / "comparison.md").read_text())]
    assert runs == jobs
    for name in jobs:
        assert f"| {name}" in r.stdout  # the printed table names them too


def test_audio_files_are_named_too_and_a_null_one_is_not(tmp_path):
    video = clip(tmp_path / "face.mp4")
    speech = tmp_path / "speech.wav"
    wavfile.write(speech, 16000, DemoSource(seconds=0.16, size=256, seed=1).audio)
    sweep = tmp_path / "sweep"
    r = lab("lipsync_lab", "-m", "source=file", f"source.video={video}", f"source.audio={speech},null", *TINY,
            f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    # null = the video's own track: no audio file to name
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [name.split("_", 1)[0] for name in jobs] == ["0", "1"]
    assert jobs[0].endswith(",audio=speech,video=face") and jobs[1].endswith(",sink=none,video=face"), jobs
