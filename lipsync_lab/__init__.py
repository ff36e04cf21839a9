"""lipsync_lab: a research and profiling workbench for streaming diffusion lip-sync (LatentSync family)."""

import os

from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.paths import CACHE_DIR

# torch.compile's artefacts in the project's ignored .cache/ (warm reruns compile in seconds). Set before anything
# imports inductor, which fixes its cache folder on first use; a folder the user chose is kept.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE_DIR / "inductor"))

__all__ = ["LipsyncInputError"]
__version__ = "0.1.0"
