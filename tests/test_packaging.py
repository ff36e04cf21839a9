"""A built wheel (pip install ., not the editable checkout) carries its configs as the package lipsync_lab.conf,
and the CLI composes from them wherever it is run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from conftest import ROOT

# what a build never needs: the venv, caches, results, earlier builds, media
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".cache",
                                    ".pytest_cache", ".ipynb_checkpoints", "results", "outputs", "multirun",
                                    "*.mp4", "*.wav", "*.pt", "*.safetensors")


def pip(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def test_the_wheel_carries_its_configs_and_the_cli_composes_from_them(tmp_path):
    # build from a copy, so that the checkout gets no build/ or egg-info of its own
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    # the venv's setuptools (no isolated build env: offline and fast); it must satisfy build-system.requires
    pip("wheel", "--no-deps", "--no-build-isolation", "--check-build-dependencies", "-w", str(tmp_path / "whl"),
        str(src), cwd=tmp_path)
    (wheel,) = (tmp_path / "whl").glob("lipsync_lab-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    confs = {f"lipsync_lab/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert "lipsync_lab/conf/config.yaml" in confs and "lipsync_lab/conf/compile/unet_vae.yaml" in confs
    assert confs - names == set(), "configs missing from the wheel"
    assert "lipsync_lab/conf/__init__.py" in names
    # pyproject lists the subpackages by hand (conf/ is mapped): every module of the checkout must be in the wheel
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lipsync_lab").rglob("*.py")}
    assert modules - names == set(), "modules missing from the wheel: add their package to pyproject's packages"

    target = tmp_path / "site"
    pip("install", "--no-deps", "--no-compile", "--target", str(target), str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing beside the package to find configs in
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), PYTHONUNBUFFERED="1")

    def python(*args):
        r = subprocess.run([sys.executable, *args], cwd=elsewhere, capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    # the wheel's package and configs are the ones imported (the editable install's finder would otherwise supply
    # lipsync_lab.conf from the checkout)
    out = python("-c", "import lipsync_lab, lipsync_lab.conf, lipsync_lab.paths as p; "
                       "print(lipsync_lab.__file__); print(lipsync_lab.conf.__file__); print(p.IN_CHECKOUT)")
    package, conf, in_checkout = out.split()
    assert Path(package) == target / "lipsync_lab" / "__init__.py"
    assert Path(conf) == target / "lipsync_lab" / "conf" / "__init__.py"
    assert in_checkout == "False"

    cfg = yaml.safe_load(python("-m", "lipsync_lab", "--cfg", "job", "compile=unet_vae"))
    assert cfg["compile"]["targets"] == ["unet", "vae"]
    assert cfg["model"]["name"] == "tiny"  # the defaults list composed too

    help_text = python("-m", "lipsync_lab", "--help")
    assert "compile: none, unet, unet_vae" in help_text.splitlines()
