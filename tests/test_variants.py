"""Variants, one way: every config group composes with every option, and the run's variant name is derived from
the choices — a group or a command-line key cannot be left out of it."""

from __future__ import annotations

import pytest

from conftest import ROOT
from lipsync_lab.config import NOT_VARIANT, compose, default_choices, variant_name

CONF = ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
NEEDS = {"source": {"file": ["source.video=clip.mp4"]}}  # options with a mandatory value


def test_every_group_folder_is_an_axis_of_the_primary_config():
    """A group folder missing from config.yaml's defaults would be a variant nobody can see in the name."""
    assert set(GROUPS) == set(default_choices())


def test_only_the_input_and_the_experiment_stay_out_of_the_name():
    assert {g for g in GROUPS if g in NOT_VARIANT} == {"source", "experiment"}


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_renames_the_variant(group, option):
    default = compose().variant
    cfg = compose([f"{group}={option}", *NEEDS.get(group, {}).get(option, [])])
    assert cfg.variant and "/" not in cfg.variant
    if group == "experiment":  # its name stays out; the settings it changes show
        return
    if group in NOT_VARIANT or option == default_choices()[group]:
        assert cfg.variant == default
    else:
        assert cfg.variant != default, (group, option)


@pytest.mark.parametrize("override", ["compile.mode=reduce-overhead", "compile.fullgraph=true",
                                      "optimize.channels_last=true", "optimize.fuse_qkv=true", "steps=7",
                                      "guidance_scale=2.0", "batch_frames=16", "model.checkpoint=/x/unet.pt",
                                      "audio.lookahead_s=0.2", "face.detector.detect_size=320"])
def test_a_key_set_on_the_command_line_renames_the_variant(override):
    assert compose([override]).variant != compose().variant


@pytest.mark.parametrize("override", ["seed=3", "max_frames=10", "print_batches=false", "warmup_batches=2",
                                      "source.seconds=2.0", "save_crops=0"])
def test_bookkeeping_keys_do_not(override):
    assert compose([override]).variant == compose().variant


def test_variant_name_shape():
    choices = dict(default_choices(), compile="unet", sink="none")
    cfg = compose(["compile=unet", "sink=none"])
    name = variant_name(choices, ["compile=unet", "sink=none", "model.checkpoint=/ckpt/dir/latentsync_unet.pt",
                                  "hydra.run.dir=/tmp/x", "seed=4"], cfg)
    assert name == "tiny-kl-dpmpp-s3-g1.5-b8-fp32-auto-compile=unet-sink=none-model.checkpoint=latentsync_unet.pt"


def test_the_seed_table_experiment_sizes_itself_and_sweeps_the_compile_group():
    cfg = compose(["experiment=seed_table"])
    assert (cfg.vae.name, cfg.scheduler.name, cfg.steps, cfg.guidance_scale, cfg.batch_frames) == \
        ("taesd", "dpmpp", 3, 1.5, 8)
    assert cfg.face.cache
