"""Quality beside speed: LatentSync's sync evaluation (SyncNet LSE-C / LSE-D / AV offset) and self-reconstruction
metrics of a finished run — as a run's last step (`quality=syncnet`) or over existing runs
(`python -m lipsync_lab.quality RUN…`). See evaluate.py."""

from lipsync_lab.quality.evaluate import QualitySettings, evaluate_run, format_quality

__all__ = ["QualitySettings", "evaluate_run", "format_quality"]
