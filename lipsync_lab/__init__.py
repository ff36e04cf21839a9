"""lipsync_lab: a research and profiling workbench for streaming diffusion lip-sync (LatentSync family)."""

from lipsync_lab.errors import LipsyncInputError

__all__ = ["LipsyncInputError"]
__version__ = "0.1.0"
