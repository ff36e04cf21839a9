"""Notebooks run top to bottom with small parameters (their first, `parameters`-tagged cell is replaced)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMALL = {
    "01_stage_breakdown.ipynb": '''BASE = ["max_frames=8", "batch_frames=4", "steps=1", "sink=none", "print_batches=false"]
VARIANTS = {"dpmpp": ["scheduler=dpmpp"], "ddim": ["scheduler=ddim"]}
OUT = OUT_DIR''',
}


def test_every_notebook_has_small_parameters():
    assert {p.name for p in NOTEBOOKS} == set(SMALL)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = SMALL[path.name].replace("OUT_DIR", repr(str(tmp_path / "runs")))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    assert list((tmp_path / "runs").rglob("timings.parquet")), "the notebook produced no run"
