"""Where the project's files live: configs, caches. Imports nothing heavy (the package's __init__ uses it)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT_CONF = PACKAGE_DIR.parent / "conf"
# In a source checkout the configs sit beside the package (conf/); an installed wheel carries them inside it as the
# package lipsync_lab.conf (pyproject maps conf/ there).
IN_CHECKOUT = (_CHECKOUT_CONF / "config.yaml").is_file()
CONF_DIR = _CHECKOUT_CONF if IN_CHECKOUT else PACKAGE_DIR / "conf"
# where .cache/ (inductor's compiled code, landmarks) lives: the checkout, or the working directory of an installed
# package (results/ follows Hydra's run directory, relative to the working directory)
PROJECT_ROOT = PACKAGE_DIR.parent if IN_CHECKOUT else Path.cwd()
CACHE_DIR = PROJECT_ROOT / ".cache"
# where notebooks and helpers write, whatever the working directory (a notebook's kernel runs in notebooks/)
RESULTS_DIR = PROJECT_ROOT / "results"
# the demo clip beside the checkout (../shared/data), used by notebooks and benchmark scripts by default
SHARED_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"
