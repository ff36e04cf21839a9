"""experiment=search: the search space's grammar, the objectives read from run folders, the Pareto front of known
points, and a real search through the CLI (the project's Hydra sweeper on Optuna) that resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import ROOT
from lipsync_lab import search
from lipsync_lab.compare import drift, load_crops
from lipsync_lab.search import Axis, SearchError

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- the grammar --------------------------------------------------------------------------------------------------


def test_every_form_of_the_grammar():
    space = search.parse_space({
        "compile": "choice(none, unet, unet_vae)",
        "optimize.sdpa": "null, math, flash",      # a comma list: the one way to offer null
        "steps": "int(1, 4)",
        "guidance_scale": "float(1.0, 2.5)",
        "cache.interval": "tag(log, int(2, 16))",
        "audio.lookahead_s": "tag(log, float(0.01, 0.2))",
        "model": "tiny",                            # one value: fixed
        "max_frames": 48,                          # a YAML value, not a string: fixed too
        "optimize.fuse_qkv": False,
    })
    assert space.axes["compile"] == Axis("compile", "choice", "choice(none, unet, unet_vae)",
                                         choices=("none", "unet", "unet_vae"))
    assert space.axes["optimize.sdpa"].choices == (None, "math", "flash")
    steps = space.axes["steps"]
    assert (steps.kind, steps.low, steps.high, steps.log) == ("int", 1, 4, False)
    assert isinstance(steps.low, int) and steps.distribution() == IntDistribution(1, 4)
    assert space.axes["guidance_scale"].distribution() == FloatDistribution(1.0, 2.5)
    assert space.axes["cache.interval"].distribution() == IntDistribution(2, 16, log=True)
    assert space.axes["audio.lookahead_s"].distribution() == FloatDistribution(0.01, 0.2, log=True)
    assert space.axes["compile"].distribution() == CategoricalDistribution(("none", "unet", "unet_vae"))
    assert space.fixed == {"model": "model=tiny", "max_frames": "max_frames=48",
                           "optimize.fuse_qkv": "optimize.fuse_qkv=false"}


def test_the_command_line_wins_per_key():
    space = search.parse_space({"steps": "int(1, 4)", "model": "tiny"},
                               ["steps=2", "model=choice(tiny, latentsync_v1)", "batch_frames=4,8"])
    assert space.fixed == {"steps": "steps=2"}
    assert set(space.axes) == {"model", "batch_frames"}
    assert space.axes["batch_frames"].choices == (4, 8)


def test_a_choice_keeps_true_apart_from_1():
    flag = search.parse_space({"optimize.channels_last": "choice(false, true)"}).axes["optimize.channels_last"]
    assert flag.choices == (False, True)
    assert flag.contains(True) and flag.contains(False) and not flag.contains(1) and not flag.contains("true")
    steps = Axis("steps", "int", "int(1, 4)", low=1, high=4)
    assert steps.contains(4) and not steps.contains(5) and not steps.contains(2.5) and not steps.contains(True)


@pytest.mark.parametrize("entry, message", [
    ("steps=range(1, 5)", "steps=range(1, 5): not in the search grammar; expects choice(a, b, …)"),
    ("steps=interval(1, 5)", "not in the search grammar"),
    ("steps=tag(fast, int(1, 4))", "not in the search grammar"),
    ("steps=int(1, 2, 3)", "int(lo, hi) takes two numbers, not 3"),
    ("steps=int(1.5, 3)", "int(lo, hi) takes two integers, not 1.5"),
    ("steps=int(4, 1)", "int(lo, hi) needs lo ≤ hi"),
    ("guidance_scale=tag(log, float(0, 1))", "a log scale needs lo > 0"),
    ("optimize.sdpa=choice(null, math)", "Hydra's choice() takes no null: write these options as a comma list"),
    ("batch_frames=choice(4, 4)", "a choice lists each value once"),
    ("+steps=choice(1, 2)", "a searched key must be one the config has"),
    ("steps=choice(1, 2", "cannot parse this entry"),
])
def test_a_bad_entry_is_one_line_naming_it(entry, message):
    with pytest.raises(SearchError) as e:
        search.parse_entry(entry)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"{entry}: ")  # names the entry as written


@pytest.mark.parametrize("value", [None, True, False, 3, 2.5, 1e-05, "none", "reduce-overhead", "a b", "null",
                                   "true", "4", "it's", "x,y", "unet_vae"])
def test_render_reads_back_as_the_same_value(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([f"k={search.render(value)}"])[0].value()
    assert parsed == value and type(parsed) is type(value)


def test_seed_points_are_the_base_settings_with_their_values():
    space = search.parse_space({"steps": "int(1, 4)", "optimize.fuse_qkv": "choice(false, true)"})
    base = {"steps": 3, "optimize.fuse_qkv": False, "compile": "none"}
    points = search.seed_points([{"compile": "none"}, {"compile": "unet"}, {"optimize.fuse_qkv": True}], space, base)
    assert points == [
        ("compile=none", {"steps": 3, "optimize.fuse_qkv": False}, {}),  # none is the base: nothing to set
        ("compile=unet", {"steps": 3, "optimize.fuse_qkv": False}, {"compile": "compile=unet"}),
        ("optimize.fuse_qkv=true", {"steps": 3, "optimize.fuse_qkv": True}, {}),
    ]
    with pytest.raises(SearchError, match=r"enqueue: steps=9: outside the searched steps=int\(1, 4\)"):
        search.seed_points([{"steps": 9}], space, base)
    with pytest.raises(SearchError, match=r"steps=8: the base setting is outside the searched steps=int\(1, 4\)"):
        search.seed_points([{"compile": "unet"}], space, {**base, "steps": 8})
    assert search.seed_points([], space, {**base, "steps": 8}) == []  # nothing enqueued: the base may lie outside


def test_a_trial_passes_only_what_differs_from_the_base():
    base = {"steps": 3, "batch_frames": 8, "optimize.sdpa": None}
    own = search.trial_overrides({"steps": 3, "batch_frames": 16, "optimize.sdpa": "math"}, base,
                                 {"compile": "compile=unet"})
    assert own == ["batch_frames=16", "optimize.sdpa=math", "compile=unet"]
    assert search.merge_overrides(["experiment=search", "compile=none", "steps=1"], ["compile=unet"]) == \
        ["experiment=search", "compile=unet", "steps=1"]
    assert search.consecutive([3, 4, 5, 9, 10, 12]) == [[3, 4, 5], [9, 10], [12]]


# -- objectives, read from run folders ----------------------------------------------------------------------------


def _run(folder: Path, status="ok", fps=2.5, crops=None, frames=(0, 1, 2)) -> Path:
    folder.mkdir(parents=True)
    record = {"status": status, "meta": {}}
    if status == "ok":
        record["summary"] = {"stream": {"sustained_fps": fps}}
    else:
        record["error"] = "LipsyncInputError: bad"
    (folder / "summary.json").write_text(json.dumps(record))
    if crops is not None:
        region = np.zeros((4, 4), np.uint8)
        region[1:3, 1:3] = 1
        np.savez_compressed(folder / "crops.npz", frames=np.asarray(frames), crops=crops, regenerated=region)
    return folder


def test_a_trial_is_its_folders_fps_and_its_mouths_drift(tmp_path):
    ref = np.full((3, 4, 4, 3), 100, np.uint8)
    trial = ref.copy()
    trial[:, 1:3, 1:3] += np.array([2, 4, 6], np.uint8)[:, None, None, None]  # inside the mouth region
    trial[:, 0, 0] = 0                                                          # outside it: not drift
    reference = load_crops(_run(tmp_path / "reference", crops=ref))
    values, why = search.evaluate(_run(tmp_path / "t", fps=3.25, crops=trial), reference)
    assert values == (3.25, 4.0) and why == ""
    assert values[1] == drift(load_crops(tmp_path / "t"), reference)["drift_mean_abs"]

    assert search.evaluate(_run(tmp_path / "failed", status="failed"), reference) == \
        (None, "failed: LipsyncInputError: bad")
    assert search.evaluate(_run(tmp_path / "one", fps=None, crops=ref), reference)[1].startswith(
        "no sustained fps: the stream had one batch")
    assert search.evaluate(_run(tmp_path / "nocrops"), reference)[1].startswith("no crops.npz")
    assert "share no frame" in search.evaluate(_run(tmp_path / "other", crops=ref, frames=(7, 8, 9)), reference)[1]
    assert search.evaluate(tmp_path / "missing", reference)[1] == "incomplete: no summary.json"

    assert search.load_reference(tmp_path / "reference")["crops"].shape == (3, 4, 4, 3)
    with pytest.raises(SearchError, match="the reference run .* did not end ok \\(failed: LipsyncInputError"):
        search.load_reference(tmp_path / "failed")
    with pytest.raises(SearchError, match="the study's reference run is gone"):
        search.load_reference(tmp_path / "missing")


# -- the Pareto front ---------------------------------------------------------------------------------------------

# (fps, drift): up and down are better
KNOWN = [(10.0, 1.0),   # 0 front
         (8.0, 0.5),    # 1 front
         (9.0, 2.0),    # 2 dominated by 0 (slower, more drift)
         (5.0, 0.5),    # 3 dominated by 1 (same drift, slower) and 6
         (12.0, 3.0),   # 4 front: the fastest
         (4.0, 0.0),    # 5 dominated by 6 (no drift either, but slower)
         (7.0, 0.0)]    # 6 front, and it dominates 5 (faster at equal drift) and 3
FRONT = {0, 1, 4, 6}


def _study_of_known_points(storage=None):
    study = search.open_study("known", storage)
    dist = {"steps": IntDistribution(1, 4)}
    for i, values in enumerate(KNOWN):
        study.add_trial(create_trial(values=list(values), params={"steps": 1 + i % 4}, distributions=dist,
                                     user_attrs={"overrides": [f"steps={1 + i % 4}"], "run_dir": f"/r/{i}_x",
                                                 "seed_variant": "compile=none" if i == 0 else ""}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"steps": 2}, distributions=dist,
                                 user_attrs={"error": "failed: out of memory", "overrides": ["steps=2"]}))
    return study


def test_the_pareto_front_of_known_points(tmp_path):
    study = _study_of_known_points(f"sqlite:///{tmp_path / 'known.db'}")
    trials = search.write_tables(study, tmp_path)
    assert set(trials.loc[trials["pareto"], "number"]) == FRONT
    assert trials.loc[7, "state"] == "FAIL" and not trials.loc[7, "pareto"] and np.isnan(trials.loc[7, "fps"])

    pareto = pd.read_csv(tmp_path / search.PARETO_CSV)
    assert list(pareto["number"]) == [4, 0, 1, 6]  # fastest first
    assert list(pareto.columns[:7]) == ["number", "state", "fps", "drift", "pareto", "seed_variant", "overrides"]
    assert {"steps", "run_dir", "error"} <= set(pareto.columns)
    rows = yaml.safe_load((tmp_path / search.PARETO_YAML).read_text())
    assert rows[1] == dict(trial=0, overrides="steps=1", seed_variant="compile=none", fps=10.0, drift=1.0,
                           run_dir="/r/0_x")

    again = search.read_trials(tmp_path)  # what the notebook reads
    assert len(again) == 8 and set(again.loc[again["pareto"], "number"]) == FRONT
    assert again.loc[7, "error"] == "failed: out of memory" and again.loc[1, "seed_variant"] == ""
    text = search.format_front(again)
    assert "| 0 | 10.00 | 1.000 | steps=1 [seed: compile=none] | 0_x |" in text
    assert "1 failed: 7 (failed: out of memory)" in text

    # the study persists: opened again from its file, the same front
    assert {t.number for t in search.open_study("known", f"sqlite:///{tmp_path / 'known.db'}").best_trials} == FRONT


def test_a_study_resumed_with_other_settings_stops(tmp_path):
    storage = search.storage_url(None, tmp_path / "sweep")
    assert storage == f"sqlite:///{tmp_path / 'sweep' / search.STUDY_FILE}" and (tmp_path / "sweep").is_dir()
    space = search.parse_space({"steps": "int(1, 4)"})
    study = search.open_study("s", storage)
    search.stamp(study, ["experiment=search", "max_frames=8"], space)
    search.stamp(search.open_study("s", storage), ["max_frames=8", "experiment=search"], space)  # same: resumes
    with pytest.raises(SearchError, match=r"study s: was made with another base \(\['experiment=search', "
                                          r"'max_frames=8'\], now \['experiment=search', 'max_frames=9'\]\)"):
        search.stamp(search.open_study("s", storage), ["experiment=search", "max_frames=9"], space)
    with pytest.raises(SearchError, match="was made with another space"):
        search.stamp(study, ["experiment=search", "max_frames=8"], search.parse_space({"steps": "int(1, 8)"}))


def test_trials_left_running_by_a_stopped_search_are_failed():
    study = search.open_study("stale", None)
    study.enqueue_trial({"steps": 2})
    trial = study.ask()
    trial.suggest_int("steps", 1, 4)
    assert search.fail_stale(study) == [0]
    (frozen,) = study.trials
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["error"].startswith("interrupted")
    assert search.finished(study) == 1


# -- a real search through the CLI --------------------------------------------------------------------------------

# the tiny model, a few frames, eager only (the seed's compiled variants are left out: minutes of torch.compile here)
SMALL = ["experiment=search", "device=cpu", "max_frames=8", "batch_frames=4", "steps=1", "audio=whisper_window",
         "hydra.sweeper.enqueue=[{compile:none}]", "hydra.sweeper.sampler.population_size=2"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "lipsync_lab", "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"), timeout=900)


def test_a_real_search_writes_its_study_and_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    r = cli(*SMALL, "hydra.sweeper.n_trials=6", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Reference run (the base settings" in r.stdout  # Hydra logs to stdout
    study = optuna.load_study(study_name="search_cpu", storage=f"sqlite:///{sweep / 'study.db'}")
    assert len(study.trials) == 6 and {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert study.user_attrs["reference_dir"] == str(sweep / "reference")

    trials = search.read_trials(sweep)
    assert list(trials["number"]) == list(range(6)) and set(trials["state"]) == {"COMPLETE"}
    folders = {p.name for p in sweep.iterdir() if (p / "summary.json").is_file()}
    assert folders == {"reference"} | {Path(d).name for d in trials["run_dir"]}
    reference = load_crops(sweep / "reference")
    for t in trials.itertuples():  # every point re-checks from its own folder
        assert Path(t.run_dir).parent == sweep and Path(t.run_dir).name.startswith(f"{t.number}_")
        record = json.loads((Path(t.run_dir) / "summary.json").read_text())
        assert record["status"] == "ok" and record["summary"]["stream"]["sustained_fps"] == t.fps
        assert drift(load_crops(t.run_dir), reference)["drift_mean_abs"] == pytest.approx(t.drift, abs=1e-12)
    seed = trials.iloc[0]
    assert seed["seed_variant"] == "compile=none" and seed["overrides"] == ""
    assert seed["drift"] == 0.0  # the base settings again: the reference's own crops, exactly (eager, CPU)

    # the front is what no other trial dominates (worked out here, not taken from Optuna)
    def dominated(a):
        return any(b.fps >= a.fps and b.drift <= a.drift and (b.fps > a.fps or b.drift < a.drift)
                   for b in trials.itertuples())
    assert set(trials.loc[trials["pareto"], "number"]) == {a.number for a in trials.itertuples() if not dominated(a)}
    pareto = pd.read_csv(sweep / search.PARETO_CSV)
    assert set(pareto["number"]) == set(trials.loc[trials["pareto"], "number"]) and len(pareto)
    assert (sweep / search.PARETO_YAML).is_file() and (sweep / "comparison.md").is_file()

    # a larger n_trials resumes the study: the same trials, one more, the reference reused
    reference_record = (sweep / "reference" / "summary.json").read_bytes()
    reference_mtime = (sweep / "reference" / "summary.json").stat().st_mtime_ns
    r = cli(*SMALL, "hydra.sweeper.n_trials=7", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Reference run (the base settings" not in r.stdout and "from the study" in r.stdout
    assert (sweep / "reference" / "summary.json").stat().st_mtime_ns == reference_mtime
    assert (sweep / "reference" / "summary.json").read_bytes() == reference_record
    more = search.read_trials(sweep)
    assert list(more["number"]) == list(range(7))
    pd.testing.assert_frame_equal(more.iloc[:6][["number", "fps", "drift", "overrides"]],
                                  trials[["number", "fps", "drift", "overrides"]])
    assert len(optuna.load_study(study_name="search_cpu", storage=f"sqlite:///{sweep / 'study.db'}").trials) == 7

    # the same study with another base setting would mix incomparable trials: one line, before anything runs
    r = cli(*[a.replace("max_frames=8", "max_frames=12") for a in SMALL], "hydra.sweeper.n_trials=8",
            f"hydra.sweep.dir={sweep}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: study search_cpu: was made with another base")
    assert len(search.read_trials(sweep)) == 7


def test_a_trial_the_config_check_refuses_fails_without_a_run(tmp_path):
    """Stream Batch with DeepCache's shallow steps is refused by the run's config check: the trial that asks for it
    (enqueued here) is failed with that reason and never launched, the others run, and the search exits 0 — a
    refused point is part of the study, not an unfinished job."""
    sweep = tmp_path / "sweep"
    args = [a for a in SMALL if not a.startswith(("steps=", "hydra.sweeper.enqueue="))]
    r = cli(*args, "steps=2", "hydra.sweeper.enqueue=[{compile:none},{diffusion.stream_batch:true,cache.interval:2}]",
            "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    trials = search.read_trials(sweep).set_index("number")
    assert list(trials["state"]) == ["COMPLETE", "FAIL"]
    assert trials.loc[1, "error"].startswith("refused: diffusion.stream_batch=true: clips at different steps share")
    assert set(trials.loc[1, "overrides"].split()) == {"cache.interval=2", "diffusion.stream_batch=true"}
    assert not any(sweep.glob("1_*"))
    assert "Trial 1 refused by the config check, not run" in r.stdout


def test_an_entry_outside_the_grammar_stops_the_search_before_it_starts(tmp_path):
    r = cli("experiment=search", "device=cpu", "steps=range(1,3)", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: steps=range(1,3): not in the search grammar; expects " \
                                                 f"{search.GRAMMAR}"
    assert not (tmp_path / "sweep").exists()


def test_one_search_at_a_time_per_study(tmp_path):
    storage = search.storage_url(None, tmp_path)
    with search.study_lock(storage, "s", tmp_path):
        with pytest.raises(SearchError, match=rf"study s: another search is running it \(process {os.getpid()} on "):
            with search.study_lock(storage, "s", tmp_path):
                pass
        with search.study_lock(storage, "other", tmp_path):  # another study in the same file: its own lock
            pass
    with search.study_lock(storage, "s", tmp_path):  # released when the search ended
        pass


def test_a_sync_search_scores_each_trial_by_its_outputs_lse_c(tmp_path):
    """objective=sync: each trial is told its output's SyncNet LSE-C (here from a weights file of random values: the
    search cannot tell, and the path is what is tested); no reference run; a search without the weights file, or
    without an output video, stops in one line before anything runs."""
    from lipsync_lab.quality.syncnet import random_syncnet

    weights = tmp_path / "syncnet_v2.model"
    torch.save(random_syncnet(3).state_dict(), weights)
    sync = ["hydra.sweeper.objective=sync", "quality=syncnet", "quality.min_frames=6", "sink=mp4"]
    sweep = tmp_path / "sweep"
    r = cli(*SMALL, *sync, f"quality.syncnet={weights}", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (sweep / "reference").exists()
    trials = search.read_trials(sweep)
    assert "lse_c" in trials.columns and "drift" not in trials.columns and set(trials["state"]) == {"COMPLETE"}
    for t in trials.itertuples():
        record = json.loads((Path(t.run_dir) / "summary.json").read_text())
        assert record["summary"]["quality"]["syncnet"]["lse_c"] == t.lse_c
        assert record["summary"]["quality"]["syncnet"]["random_weights"] is False
    assert "| trial | fps | lse_c |" in r.stdout

    for args, why in ((sync, "needs quality=syncnet quality.syncnet=syncnet_v2.model"),
                      ([*sync[:-1], f"quality.syncnet={weights}", "sink=none"], "needs an output video")):
        r = cli(*SMALL, *args, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'refused'}")
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip().splitlines()[-1].startswith("error: hydra.sweeper.objective=sync") and why in r.stderr
    assert not (tmp_path / "refused" / "study.db").exists()


def test_a_sync_trial_on_random_weights_is_failed_not_told(tmp_path):
    folder = _run(tmp_path / "t")
    record = json.loads((folder / "summary.json").read_text())
    record["summary"]["quality"] = {"syncnet": {"random_weights": True, "lse_c": 1.0}}
    (folder / "summary.json").write_text(json.dumps(record))
    values, why = search.evaluate(folder, None, "sync")
    assert values is None and "random weights" in why
    record["summary"]["quality"]["syncnet"]["random_weights"] = False
    (folder / "summary.json").write_text(json.dumps(record))
    assert search.evaluate(folder, None, "sync") == ((2.5, 1.0), "")
