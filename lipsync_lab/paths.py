"""Where the project's files live: configs, caches. Imports nothing heavy (the package's __init__ uses it)."""

from __future__ import annotations

import os
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
# Real media (LatentSync's demo clip: demo1_video.mp4, demo1_audio.wav, latentsync_mask.png), read by the tests that
# need a real talking head and by the notebooks' and benchmark scripts' defaults: the folder $LIPSYNC_LAB_DATA names,
# else ../shared/data beside the checkout. Nothing requires it: tests skip without it, defaults fall back to the
# embedded demo (lipsync_lab.bench.default_video / default_audio).
DATA_ENV = "LIPSYNC_LAB_DATA"
DATA_DIR = Path(os.environ.get(DATA_ENV) or PROJECT_ROOT.parent / "shared" / "data").expanduser().absolute()
