"""Hydra's submitit launchers (conf/hydra/launcher/): slurm composes without submitting; local runs a real sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT
from lipsync_lab.results import run_index


def cli(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "lipsync_lab", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def test_slurm_launcher_composes_one_gpu_per_job():
    r = cli("hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher")  # --cfg only prints: no sbatch
    assert r.returncode == 0, r.stderr[-2000:]
    launcher = yaml.safe_load(r.stdout)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["gpus_per_node"] == 1 and launcher["tasks_per_node"] == 1
    assert (launcher["cpus_per_task"], launcher["mem_gb"], launcher["timeout_min"]) == (8, 64, 60)
    assert launcher["name"] == "lipsync_lab" and launcher["partition"] is None
    assert launcher["submitit_folder"].startswith("${hydra.sweep.dir}/")
    assert "array_parallelism" in launcher  # the rest of the plugin's submitit_slurm node is there to override


def test_local_launcher_runs_a_sweep(tmp_path):
    # two jobs at once, one torch thread each (the launcher runs them side by side)
    r = cli("-m", "hydra/launcher=local", "steps=1,2", "max_frames=4", "batch_frames=4", "sink=none",
            "print_batches=false", "save_crops=0", "threads=1", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in r.stdout + r.stderr

    runs = run_index(tmp_path)
    assert len(runs) == 2 and runs["status"].tolist() == ["ok", "ok"], runs.to_string()
    assert runs["variant"].nunique() == 2
    for run_dir in map(Path, runs["run_dir"]):
        assert (run_dir / "timings.parquet").is_file()
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "ok"
        choices = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]
        assert choices["hydra/launcher"] == "local"
    # each job went through submitit (its pickled result), not Hydra's in-process basic launcher
    assert len(list((tmp_path / ".submitit").glob("*/*_result.pkl"))) == 2
