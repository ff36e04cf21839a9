"""Run a notebook headless with other parameters (the tests run every notebook through this).

    python -m lipsync_lab.notebooks notebooks/01_seed_table.ipynb -p OVERRIDES "['device=cuda']" [-p NAME VALUE …]
                                    [--output results/notebooks/01.ipynb] [--kernel lipsync_lab]

Each notebook's first code cell holds its parameters and is tagged `parameters` (papermill's convention, so
`papermill -p NAME VALUE` works too). Here, as with papermill, the values given are assigned in a cell inserted
after it (tagged `injected-parameters`), so the defaults stay readable above them. A value is read as a Python
literal where it parses as one (`8`, `[720, 1080]`, `None`), else taken as a string. A name the parameters cell does
not define is an error (a typo would otherwise be ignored silently).

The kernel runs in the notebook's folder (as in JupyterLab) with the notebook's kernel, `lipsync_lab` — the
project's .venv, registered by `make install` — where that kernel runs this interpreter; where it is not registered
(e.g. after a bare `pip install -e ".[dev]"`) or runs another interpreter, the notebook runs on this interpreter
instead, and a line says so. `--kernel NAME` runs the kernel NAME as registered, whatever it runs. The executed
copy, outputs included, goes to `--output` (default: results/notebooks/<name>_<timestamp>.ipynb); the committed
notebook is never written.
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


def same_interpreter(executable: str) -> bool:
    """Whether `executable` (a kernelspec's argv[0]: a path, or a name looked up on PATH) is this interpreter: the
    same file in the same folder. Not the resolved file alone: a venv's python links to the system's, but only
    the venv's sees the venv's packages."""
    import shutil

    found = shutil.which(executable)
    if not found:
        return False
    this = Path(sys.executable).absolute()
    return Path(found).absolute().parent == this.parent and os.path.samefile(found, this)


def this_interpreter_spec(name: str = KERNEL_NAME):
    """A kernelspec named `name` that starts an IPython kernel on this interpreter: ipykernel's native spec, which
    it builds from sys.executable (its command line, metadata and protocol version)."""
    from ipykernel.kernelspec import get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec

    return KernelSpec(**{**get_kernel_dict(), "name": name, "display_name": f"{name} ({sys.executable})"})


def resolve_kernel(name: str = KERNEL_NAME, strict: bool = False):
    """(kernel spec manager, kernel spec, note) for the kernel `name`: the registered one where it runs this
    interpreter (note None), else one that does (note: one line saying why). `strict`: the registered kernel
    whatever it runs, ValueError where there is none (a kernel named on purpose is not swapped)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(name)
    except NoSuchKernel:
        if strict:
            raise ValueError(f"no Jupyter kernel named {name!r} (jupyter kernelspec list shows the kernels)") from None
        why = f"the {name!r} kernel is not registered (make install registers it)"
    else:
        if strict or same_interpreter(spec.argv[0]):
            return manager, spec, None
        why = f"the {name!r} kernel runs {spec.argv[0]}, not this interpreter"
    spec = this_interpreter_spec(name)

    class ThisInterpreter(KernelSpecManager):  # finds `name` as the spec above, whatever is registered
        def get_kernel_spec(self, kernel_name):
            if kernel_name == name:
                return spec
            return super().get_kernel_spec(kernel_name)

    return ThisInterpreter(), spec, f"{why}: running the notebook on {sys.executable}"


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
    (its metadata's kernelspec: `lipsync_lab`) where it runs this interpreter, else this interpreter (one line on
    stderr says so), or the registered kernel `kernel_name` names; a cell's error raises nbclient's
    CellExecutionError with the cell and its traceback."""
    import nbformat
    from jupyter_client import AsyncKernelManager
    from nbclient import NotebookClient

    from lipsync_lab.paths import DATA_ENV

    nb = nbformat.read(notebook, as_version=4)
    inject_parameters(nb, dict(params or {}))
    kernel = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or KERNEL_NAME
    specs, _, note = resolve_kernel(kernel, strict=bool(kernel_name))
    if note:
        print(note, file=sys.stderr)
    cwd = Path(cwd) if cwd else Path(notebook).resolve().parent
    env = dict(os.environ)
    if env.get(DATA_ENV):  # a relative data folder is the caller's working directory's, not the kernel's (cwd)
        env[DATA_ENV] = str(Path(env[DATA_ENV]).expanduser().absolute())
    km = AsyncKernelManager(kernel_name=kernel, kernel_spec_manager=specs)
    client = NotebookClient(nb, km=km, timeout=timeout, kernel_name=kernel,
                            resources={"metadata": {"path": str(cwd)}})
    try:
        # cleanup_kc: shut the kernel down afterwards, as nbclient does with a manager of its own making
        client.execute(cleanup_kc=True, env=env)
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
    ap.add_argument("--kernel", help=f"a registered Jupyter kernel (default: the notebook's, {KERNEL_NAME}, where "
                                     "it runs this interpreter, else this interpreter)")
    args = ap.parse_args(argv)
    path = Path(args.notebook)
    output = args.output or RESULTS_DIR / "notebooks" / f"{path.stem}_{dt.datetime.now():%Y-%m-%d_%H-%M-%S}.ipynb"
    params = {name: _value(value) for name, value in args.parameter}
    try:
        execute(path, params, output, args.kernel)
    except ValueError as e:  # a bad parameter, no parameters cell or no such --kernel: nothing ran
        sys.exit(f"error: {path}: {e}")
    except Exception:
        print(f"The notebook failed; the executed part, outputs included: {output}", file=sys.stderr)
        raise
    print(f"Executed notebook: {output}")


if __name__ == "__main__":
    main(sys.argv[1:])
