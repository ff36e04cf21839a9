"""Records which files a Python process imported, for `make gpu-bundle` (scripts/gpu_bundle.sh).

With this folder first on PYTHONPATH and LIPSYNC_IMPORT_LOG=<file> set, every Python process appends the real
paths of the modules it had loaded, one a line, to <file> when it exits. scripts/bundle_deps.py maps those files to
the distributions that installed them, so the GPU bundle carries what the benchmark's runs really import (an import
made inside a function, or by a plugin Hydra loads, counts as much as one at the top of a file).

Nothing happens without the variable. Python imports the first `sitecustomize` on its path only: none is installed
in the project's venv or its base interpreter, so this one hides nothing there.
"""

import atexit
import os
import sys

_LOG = os.environ.get("LIPSYNC_IMPORT_LOG")


def _record() -> None:
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            files.add(os.path.realpath(path))
    # one appending write per process: a child process that outlives its parent cannot interleave lines with it
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(f"{p}\n" for p in sorted(files)).encode())
    finally:
        os.close(fd)


if _LOG:
    atexit.register(_record)
