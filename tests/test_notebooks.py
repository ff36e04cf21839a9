"""Notebooks run top to bottom with small parameters on the CPU, through the same runner a user's headless run uses
(lipsync_lab.notebooks: the kernel runs in notebooks/, on this interpreter, registered as the project's kernel or
not), write their figures under the project's results/ and leave nothing behind in notebooks/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel

from lipsync_lab.notebooks import (KERNEL_NAME, execute, inject_parameters, parameter_names, parameters_cell,
                                   resolve_kernel, same_interpreter)
from lipsync_lab.lab import STREAM_KEYS, summaries
from lipsync_lab.paths import RESULTS_DIR

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TINY_RUN = ["sink=none", "print_batches=false", "max_frames=16", "batch_frames=4", "steps=1"]
# per notebook: small parameters, and files it must write into its output folder (its figures first)
SMALL = {
    "01_seed_table.ipynb": (dict(OVERRIDES=["sink=none", "print_batches=false", "max_frames=8", "batch_frames=4",
                                            "steps=1", "quality.min_frames=6"]),
                            ["stage_bars.png", "tflops.png", "memory.png", "comparison.md", "speed_vs_sync.png"]),
    "02_restore_and_align.ipynb": (dict(SHORT_SIDES=[360], BATCH=2, REPEATS=1, DEVICES=["cpu"]),
                                   ["align_restore_ms_per_frame.png", "kornia_vs_cv2_difference.png", "timings.csv"]),
    "03_audio_front_ends.ipynb": (dict(SECONDS=1.28), ["audio_front_ends.png", "drift.csv"]),
    "04_stream_latency.ipynb": (dict(OVERRIDES=TINY_RUN), ["latency_timeline.png", "frame_latency.png",
                                                           "sequential/stream.parquet", "pipelined/stream.parquet"]),
    "05_profiler_review.ipynb": (dict(OVERRIDES=TINY_RUN), ["trace_review.png", "stage_timeline.png",
                                                            "stage_operators.png", "trace_diff.png",
                                                            "top_operators.csv", "stage_operators.csv",
                                                            "stage_diff.csv", "operator_diff.csv", "run/trace.json",
                                                            "baseline/trace.json"]),
    "06_speed_vs_drift.ipynb": (dict(OVERRIDES=["device=cpu", "max_frames=8", "batch_frames=4", "steps=1",
                                                "audio=whisper_window", "hydra.sweeper.n_trials=3",
                                                "hydra.sweeper.enqueue=[{compile:none}]",
                                                "hydra.sweeper.sampler.population_size=2"]),
                                ["speed_vs_drift.png", "pareto.csv", "trials.csv", "study.db",
                                 "reference/crops.npz"]),
}
TEST_RESULTS = RESULTS_DIR / ".test-notebooks"


def _untracked(folder: Path) -> set[str]:
    r = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", str(folder)], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    return set(r.stdout.splitlines())


def test_every_notebook_has_small_parameters():
    assert {p.name for p in NOTEBOOKS} == set(SMALL)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean_and_parameterised(path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "commit notebooks without outputs"
    assert parameters_cell(nb) == nb.cells.index(code[0]), "the first code cell holds the parameters"
    assert set(SMALL[path.name][0]) <= set(parameter_names(code[0].source))
    assert "OUT" in parameter_names(code[0].source)
    assert nb.metadata["kernelspec"]["name"] == KERNEL_NAME
    # no pipeline logic of their own: code cells import from lipsync_lab (and IPython's display), nothing else
    for cell in code:
        for line in cell.source.splitlines():
            if line.startswith(("import ", "from ")):
                assert line.split()[1].split(".")[0] in ("lipsync_lab", "IPython"), line


def test_the_project_kernel_is_this_environment():
    """Whether or not `make install` registered the kernel: the one the runner starts runs this interpreter."""
    manager, spec, note = resolve_kernel(KERNEL_NAME)
    assert manager.get_kernel_spec(KERNEL_NAME).argv == spec.argv  # what the kernel manager will start
    assert Path(spec.argv[0]).absolute() == Path(sys.executable).absolute(), spec.argv
    assert "ipykernel_launcher" in spec.argv and "{connection_file}" in spec.argv


def _no_kernels(self, name):
    raise NoSuchKernel(name)


def test_same_interpreter(tmp_path):
    assert same_interpreter(sys.executable)
    assert not same_interpreter(str(tmp_path / "no_such_python"))
    # the same binary elsewhere is another environment (a venv's python is a link to the system's, for one)
    (tmp_path / "python").symlink_to(sys.executable)
    assert not same_interpreter(str(tmp_path / "python"))


def test_an_unregistered_kernel_runs_the_notebook_on_this_interpreter(tmp_path, monkeypatch, capsys):
    """As after `pip install -e ".[dev]"` alone: jupyter_client finds no kernel by the notebook's name."""
    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", _no_kernels)
    _, spec, note = resolve_kernel(KERNEL_NAME)
    assert spec.argv[0] == sys.executable and "not registered" in note and "\n" not in note
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("X = 1", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("import sys\nprint(sys.executable, X)")])
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "lipsync_lab (.venv)", "language": "python"}
    nbformat.write(nb, tmp_path / "t.ipynb")
    out = execute(tmp_path / "t.ipynb", {"X": 5}, tmp_path / "out.ipynb", timeout=120)
    assert out.cells[2].outputs[0]["text"] == f"{sys.executable} 5\n"
    assert capsys.readouterr().err.splitlines() == [note]  # said once, in one line
    with pytest.raises(ValueError, match="no Jupyter kernel named 'lipsync_lab'"):  # named on purpose: not swapped
        execute(tmp_path / "t.ipynb", kernel_name=KERNEL_NAME)


def test_a_kernel_registered_for_another_interpreter_is_not_used(monkeypatch):
    other = KernelSpec(name=KERNEL_NAME, argv=["/usr/bin/python3", "-m", "ipykernel_launcher", "-f",
                                               "{connection_file}"], display_name="elsewhere", language="python")
    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", lambda self, name: other)
    monkeypatch.setattr(sys, "executable", str(ROOT / ".venv" / "bin" / "python"))  # a venv's, whatever runs this
    manager, spec, note = resolve_kernel(KERNEL_NAME)
    assert spec.argv[0] == sys.executable and manager.get_kernel_spec(KERNEL_NAME) is spec
    assert note == (f"the {KERNEL_NAME!r} kernel runs /usr/bin/python3, not this interpreter: running the notebook "
                    f"on {sys.executable}")
    assert resolve_kernel(KERNEL_NAME, strict=True)[1] is other  # --kernel: as registered


def test_parameters_are_injected_after_the_parameters_cell_and_checked():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"),
                                         nbformat.v4.new_code_cell("A = 1\nB: list = [2]  # b", metadata={
                                             "tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("print(A, B)")])
    assert parameter_names(nb.cells[1].source) == ["A", "B"]
    inject_parameters(nb, {"B": [3, "x"], "A": None})
    assert nb.cells[2].metadata["tags"] == ["injected-parameters"]
    assert "B = [3, 'x']" in nb.cells[2].source and "A = None" in nb.cells[2].source
    with pytest.raises(ValueError, match="not parameters of this notebook: C"):
        inject_parameters(nb, {"C": 1})


@pytest.fixture(scope="module")
def notebooks_before():
    return _untracked(ROOT / "notebooks")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_writes_its_figures_under_results(path: Path, notebooks_before):
    params, files = SMALL[path.name]
    out = TEST_RESULTS / path.stem
    shutil.rmtree(out, ignore_errors=True)
    try:
        # OUT relative: the notebook must resolve it against the project, though its kernel runs in notebooks/
        execute(path, {**params, "OUT": str(out.relative_to(ROOT))}, cwd=ROOT / "notebooks", timeout=900)
        for name in files:
            smallest = 1000 if name.endswith(".png") else 1
            assert (out / name).is_file() and (out / name).stat().st_size > smallest, f"{name} not written in {out}"
        if path.name.startswith("04"):  # the stream's figures the notebook tabulates are where it looks for them
            table = summaries({e: out / e for e in ("sequential", "pipelined")}, STREAM_KEYS)
            assert table.drop(columns="status").notna().all().all(), table.to_string()
        assert _untracked(ROOT / "notebooks") == notebooks_before, "the notebook left files in notebooks/"
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if TEST_RESULTS.is_dir() and not any(TEST_RESULTS.iterdir()):
            TEST_RESULTS.rmdir()


def test_headless_runner_reports_an_unknown_parameter(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lipsync_lab.notebooks", str(NOTEBOOKS[0]), "-p", "NO_SUCH", "1",
                        "--output", str(tmp_path / "x.ipynb")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "not parameters of this notebook: NO_SUCH" in r.stderr
