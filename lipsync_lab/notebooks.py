"""Run a notebook headless with other parameters (the tests run every notebook through this).

    python -m lipsync_lab.notebooks notebooks/01_seed_table.ipynb -p OVERRIDES "['device=cuda']" [-p NAME VALUE …]
                                    [--output results/notebooks/01.ipynb] [--kernel lipsync_lab]

Each notebook's first code cell holds its parameters and is tagged `parameters` (papermill's convention, so
`papermill -p NAME VALUE` works too). Here, as with papermill, the values given are assigned in a cell inserted
after it (tagged `injected-parameters`), so the defaults stay readable above them. A value is read as a Python
literal where it parses as one (`8`, `[720, 1080]`, `None`), else taken as a string. A name the parameters cell does
not define is an error (a typo would otherwise be ignored silently).

The kernel runs in the notebook's folder (as in JupyterLab) with the project's kernel, `lipsync_lab` — the
project's .venv, installed by `make install`. The executed copy, outputs included, goes to `--output` (default:
results/notebooks/<name>_<timestamp>.ipynb); the committed notebook is never written.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import os
import sys
from pathlib import Path

from lipsync_lab.paths import RESULTS_DIR

KERNEL_NAME = "lipsync_lab"                 # Makefile: ipykernel install --sys-prefix --name lipsync_lab
KERNEL_DISPLAY_NAME = "lipsync_lab (.venv)"


def parameters_cell(nb) -> int:
    """Index of the cell tagged `parameters`."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return i
    raise ValueError("the notebook has no code cell tagged 'parameters'")


def parameter_names(source: str) -> list[str]:
    """The names a parameters cell assigns, in order."""
    names = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
    return names


def inject_parameters(nb, params: dict) -> None:
    """Insert a cell assigning `params` right after the parameters cell (in place)."""
    import nbformat

    if not params:
        return
    index = parameters_cell(nb)
    known = parameter_names(nb.cells[index].source)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"not parameters of this notebook: {', '.join(unknown)} (it has: {', '.join(known)})")
    source = "# injected parameters\n" + "\n".join(f"{name} = {value!r}" for name, value in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)


def execute(notebook: str | os.PathLike, params: dict | None = None, output: str | os.PathLike | None = None,
            kernel_name: str | None = None, cwd: str | os.PathLike | None = None, timeout: int = 3600):
    """Execute a copy of `notebook` with `params`; returns the executed notebook (also written to `output` when
    given). The kernel runs in `cwd` (default: the notebook's folder, as in JupyterLab) and is the notebook's own
    (its metadata's kernelspec: `lipsync_lab`) unless `kernel_name` names another; a cell's error raises nbclient's
    CellExecutionError with the cell and its traceback."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    inject_parameters(nb, dict(params or {}))
    kernel = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or KERNEL_NAME
    cwd = Path(cwd) if cwd else Path(notebook).resolve().parent
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    finally:
        if output:  # the executed copy, even a failed one: its outputs say where it stopped
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, output)
    return nb


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lipsync_lab.notebooks", description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook", help="a notebook, e.g. notebooks/01_seed_table.ipynb")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a parameter (repeatable); VALUE is a Python literal or a string")
    ap.add_argument("--output", help="the executed copy (default: results/notebooks/<name>_<timestamp>.ipynb)")
    ap.add_argument("--kernel", help=f"Jupyter kernel (default: the notebook's, {KERNEL_NAME})")
    args = ap.parse_args(argv)
    path = Path(args.notebook)
    output = args.output or RESULTS_DIR / "notebooks" / f"{path.stem}_{dt.datetime.now():%Y-%m-%d_%H-%M-%S}.ipynb"
    params = {name: _value(value) for name, value in args.parameter}
    try:
        execute(path, params, output, args.kernel)
    except ValueError as e:  # a bad parameter or no parameters cell: nothing ran
        sys.exit(f"error: {path}: {e}")
    except Exception:
        print(f"The notebook failed; the executed part, outputs included: {output}", file=sys.stderr)
        raise
    print(f"Executed notebook: {output}")


if __name__ == "__main__":
    main(sys.argv[1:])
