"""The README documents only keys that work as written: every config key it names exists, and every
`python -m lipsync_lab …` command in its code blocks passes the command-line check (schema.py)."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT
from lipsync_lab.paths import CONF_DIR
from lipsync_lab.schema import SCHEMA, _group_options, _library_node, check_command_line

README = (ROOT / "README.md").read_text()
GROUPS = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
NODES = GROUPS | {"optimize", "timing", "profiler"}  # the groups and the plain keys' nodes
PLAIN = {k for k in SCHEMA if "." not in k}


def documented_overrides() -> list[str]:
    """Backticked `key`, `key=value` and `group=option` texts whose first name is a config node."""
    out = []
    for span in re.findall(r"`([^`\n]+)`", README):
        for token in span.split():
            token = token.strip("\"'")
            key = token.split("=")[0].lstrip("+~")
            if any(c in token for c in "{…<*") or "/" in key:
                continue
            head = key.split(".")[0]
            if ("." in key and head in NODES) or ("=" in token and (head in GROUPS or key in PLAIN)):
                out.append(token)
    return sorted(set(out))


@pytest.mark.parametrize("token", documented_overrides())
def test_a_documented_key_or_option_exists(token):
    key, _, value = token.partition("=")
    key = key.lstrip("+~")
    if key.startswith("hydra.sweeper."):  # the search's sweeper (experiment=search): a key of its registered config
        from omegaconf import OmegaConf

        from lipsync_lab.schema import _compose
        absent = object()
        assert OmegaConf.select(_compose(["experiment=search"]), key, default=absent) is not absent, \
            f"{token}: {key} is not a key of the search's sweeper"
    elif key in GROUPS and value:
        assert all(v in _group_options(key) for v in re.split("[,|]", value)), f"{token}: no such option"
    else:
        assert key in SCHEMA or _library_node(key), f"{token}: {key} is not a key of any option"


def readme_commands() -> list[list[str]]:
    """The overrides of every `python -m lipsync_lab` (and `make demo ARGS=…`) line in the README's code blocks."""
    commands = []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python -m lipsync_lab ") or line == "python -m lipsync_lab":
                commands.append(shlex.split(line)[3:])
            elif line.startswith("make demo ARGS="):
                commands.append(shlex.split(shlex.split(line)[2].split("=", 1)[1]))
    return commands


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: " ".join(a)[:80])
def test_a_readme_command_passes_the_check(args, tmp_path, monkeypatch):
    if "--help" in args or "--cfg" in args:
        return
    monkeypatch.chdir(tmp_path)  # the example paths (clip.mp4, checkpoints/…) made here as placeholders
    for arg in args:
        key, _, value = arg.partition("=")
        if value and ("/" in value or value.endswith((".mp4", ".wav", ".pt"))) and not key.startswith("hydra"):
            path = tmp_path / value
            if key == "vae.path":
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    multirun = "-m" in args or "--multirun" in args or any(a.startswith("experiment=") for a in args)
    check_command_line([a for a in args if not a.startswith("-")], multirun=multirun)


def test_the_readme_has_commands_to_check():
    assert len(readme_commands()) >= 8 and len(documented_overrides()) >= 40
