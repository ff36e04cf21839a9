"""The Hydra configs; a wheel carries this folder as the package lipsync_lab.conf (Hydra: pkg://lipsync_lab.conf)."""
