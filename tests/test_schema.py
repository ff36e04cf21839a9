"""Checked configs (schema.py): every key of every option has a spec, defaults pass, each bad value is one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from conftest import ROOT
from lipsync_lab.config import compose
from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.paths import CONF_DIR
from lipsync_lab.schema import SCHEMA, _is_internal, _library_node, check, check_command_line, leaves

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment"))
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_key_of_every_option_has_a_spec_and_its_default_passes(group, option):
    cfg = compose([f"{group}={option}"] + (["source.video=x.mp4"] if (group, option) == ("source", "file") else []))
    for key in leaves(OmegaConf.to_container(cfg, resolve=False)):
        assert _is_internal(key) or _library_node(key) or key in SCHEMA, f"{key} has no spec in schema.SCHEMA"
    if (group, option) != ("source", "file"):  # its video does not exist: that is checked (below)
        check(cfg)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_passes_the_command_line_check(experiment):
    extra = ["source=file", f"source.video={ROOT / 'README.md'}"] if experiment == "restore_compare" else []
    check_command_line([f"experiment={experiment}", *extra], multirun=True)


BAD = [
    (["batch_frames=0"], "batch_frames=0: expects an integer from 1"),
    (["batch_frames=-4"], "batch_frames=-4: expects an integer from 1"),
    (["steps=-1"], "steps=-1: expects an integer from 1"),
    (["guidance_scale=abc"], "guidance_scale=abc: expects a number ≥ 0"),
    (["face.cache=/some/folder"], "face.cache=/some/folder: expects true or false (the cache's folder goes in "
                                  "face.cache_dir)"),
    (["compile.mode=fast"], "compile.mode=fast: expects one of default | reduce-overhead"),
    (["compile=fast"], "compile=fast: no such option; compile is one of none, unet, unet_vae"),
    (["face.cach=true"], "face.cach: no such key under face=dlib (did you mean face.cache?) — to add it as a new "
                         "key: +face.cach=…"),
    (["pad_ms=100"], "pad_ms: no such key (did you mean vad.detector.pad_ms?)"),
    (["source.convert=swscale"], "source.convert: no such key under source=demo; it is a setting of source=file"),
    (["audio.front_end.positions=window"], "audio.front_end.positions: no such key under audio=whisper; it is a "
                                           "setting of audio=faster_whisper, audio=whisper_window"),
    (["+steps=3"], "+steps: steps is already a key: set it with steps=3"),
    (["steps=2,4"], "steps=2,4: a list of values is a sweep: add -m"),
    (["source=file"], "source.video: not set"),
    (["source=file", "source.video=/nonexistent/clip.mp4"], "/nonexistent/clip.mp4: video file not found "
                                                             "(source.video)"),
    (["model.checkpoint=/nonexistent/unet.pt"], "/nonexistent/unet.pt: UNet checkpoint not found"),
    (["device.name=gpu"], "device.name=gpu: expects one of auto | cpu | cuda | cuda:N"),
    (["hydra.run.dir=/proc/x"], "hydra.run.dir=/proc/x: cannot make the run's folder"),
    (["model.unet.layers_per_block=abc"], "model.unet.layers_per_block=abc: expects an integer"),
    (["vad=silero", "vad.detector.threshold=2"], "vad.detector.threshold=2: expects a number ≥ 0 and ≤ 1"),
    (["+nonsense=1"], "nonsense: not a setting lipsync_lab knows"),
    # each valid alone, refused together (the stage would refuse it at build time): said before anything is built
    (["diffusion.stream_batch=true", "cache=deepcache"], "diffusion.stream_batch=true: clips at different steps share "
                                                         "one UNet call, so every step must run the same UNet "
                                                         "callable; cache.interval=3 makes steps shallow"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_each_bad_value_is_one_line_naming_the_key_and_what_it_accepts(overrides, message):
    with pytest.raises(LipsyncInputError) as info:
        check_command_line(overrides, multirun=False)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("overrides,message", [
    (["steps=1,x"], "steps=x: expects an integer"),
    (["compile=none,fast"], "compile=fast: no such option"),
    (["experiment=seed_table", "batch_frames=0"], "batch_frames=0"),
    (["audio=whisper,whisper_window", "audio.front_end.positions=window"], "no such key under audio=whisper"),
])
def test_a_sweep_with_a_bad_value_stops_before_its_first_job(overrides, message):
    with pytest.raises(LipsyncInputError, match=message):
        check_command_line(overrides, multirun=True)


def test_values_that_are_right_pass():
    check_command_line(["batch_frames=16", "steps=20", "guidance_scale=1", "face.cache=true", "compile=unet",
                        "compile.mode=reduce-overhead", "+audio.allow_official_unet=true", "device.name=cuda:1",
                        "vad=silero", "vad.detector.pad_ms=100", "audio=whisper_window",
                        "audio.front_end.positions=window", "model.unet.layers_per_block=2"], multirun=False)
    check_command_line(["steps=1,2", "compile=none,unet"], multirun=True)
    # Stream Batch with DeepCache where every step is full: interval 1, or a single step
    check_command_line(["diffusion.stream_batch=true", "cache=deepcache", "cache.interval=1"], multirun=False)
    check_command_line(["diffusion.stream_batch=true", "cache=deepcache", "steps=1"], multirun=False)


def test_run_checks_a_config_composed_in_python(tmp_path):
    from lipsync_lab.run import run

    cfg = compose(["steps=1"])
    cfg.steps = 0
    with pytest.raises(LipsyncInputError, match="steps=0: expects an integer from 1"):
        run(cfg, tmp_path)
    assert '"status": "failed"' in (tmp_path / "summary.json").read_text()


@pytest.mark.parametrize("args,message", [
    (["batch_frames=0"], "error: batch_frames=0: expects an integer from 1 to 256"),
    (["foo=1"], "error: foo: no such key"),
    (["-m", "steps=1,-2"], "error: steps=-2: expects an integer from 1"),
])
def test_the_command_line_says_it_in_one_line_with_exit_2_and_makes_no_folder(tmp_path, args, message):
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "lipsync_lab", *args, f"hydra.run.dir={tmp_path / 'run'}",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    elapsed = time.monotonic() - start
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith(message), r.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
    print(f"{' '.join(args)}: error after {elapsed:.1f} s")
