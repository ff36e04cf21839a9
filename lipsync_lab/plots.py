"""Plots over collected timings (`results.collect_runs`): per-stage stacked bars and a per-batch timeline."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from lipsync_lab.media.source import FPS
from lipsync_lab.results import batch_totals, stage_medians
from lipsync_lab.timing import LABELS, TOP_LEVEL


def stage_bars(df: pd.DataFrame, by: str = "variant", ax=None):
    """Stacked bars of the median seconds per top-level stage, one bar per `by` value (steady batches)."""
    table = stage_medians(df, by=by)
    table = table[[k for k in TOP_LEVEL if k in table.columns]]
    ax = ax or plt.subplots(figsize=(8, 0.6 * len(table) + 1.5))[1]
    table.rename(columns=LABELS).plot.barh(stacked=True, ax=ax, width=0.7)
    ax.set_xlabel("median seconds per batch")
    ax.set_ylabel("")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return ax


def batch_timeline(df: pd.DataFrame, ax=None):
    """Per-batch stacked stage times for one run, with the real-time budget (batch frames / 25 fps) drawn."""
    if "run_dir" in df and df["run_dir"].nunique() > 1:
        raise ValueError("batch_timeline plots one run; filter df to one run_dir first")
    top = df[df["parent"].isna()].pivot_table(index="batch", columns="stage", values="seconds", aggfunc="sum")
    top = top[[k for k in TOP_LEVEL if k in top.columns]]
    ax = ax or plt.subplots(figsize=(9, 3.5))[1]
    top.rename(columns=LABELS).plot.bar(stacked=True, ax=ax, width=0.8)
    totals = batch_totals(df)
    ax.step(range(len(totals)), totals["frames"] / FPS, where="mid", color="k", lw=1.5,
            label="real-time budget")
    for i, warm in enumerate(totals["warmup"]):
        if warm:
            ax.axvspan(i - 0.5, i + 0.5, color="grey", alpha=0.15, lw=0)
    ax.set_xlabel("batch (shaded: warm-up)")
    ax.set_ylabel("seconds")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return ax
