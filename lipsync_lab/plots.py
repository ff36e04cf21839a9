"""Plots for the notebooks: collected timings (`results.collect_runs`: per-stage stacked bars, a per-batch
timeline), the stream's latency (`results.read_stream`), the stage benchmarks (`bench`), profiler traces (`traces`);
`save_figure` writes any of them as a PNG."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from lipsync_lab.media.source import FPS
from lipsync_lab.results import batch_totals, stage_medians
from lipsync_lab.timing import LABELS, STAGES, TOP_LEVEL


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


def save_figure(fig_or_ax, folder: str | os.PathLike, name: str, dpi: int = 120) -> Path:
    """Write a figure (or the figure of an Axes / array of Axes) as `<folder>/<name>.png` and return the path; the
    figure stays open, so a notebook still shows it."""
    fig = fig_or_ax
    if isinstance(fig, np.ndarray):
        fig = fig.flat[0]
    if isinstance(fig, Axes):
        fig = fig.figure
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def latency_timeline(stream: pd.DataFrame, ax=None):
    """One run's stream (results.read_stream) as a timeline, one row per batch: waiting for processing (thin, from
    the moment its frames and audio look-ahead had arrived), processing (bar; hatched: warm-up, grey: diffusion
    skipped), and the moment the sink took its frames (dot). Two references: when each batch's last frame was
    captured at 25 fps, and the 25-fps playback deadline once the first batch is out — a batch written right of it
    would stall a live viewer."""
    ax = ax or plt.subplots(figsize=(9, 0.28 * len(stream) + 1.8))[1]
    y = stream["batch"].to_numpy()
    skipped = stream["skipped"].fillna("").astype(bool).to_numpy() if "skipped" in stream else np.zeros(len(y), bool)
    warm = stream["warmup"].to_numpy(bool)
    ax.hlines(y, stream["arrived_s"], stream["started_s"], color="0.6", lw=1, label="waiting")
    for mask, kwargs in ((~skipped & ~warm, dict(color="C0", label="processing")),
                         (~skipped & warm, dict(color="C0", alpha=0.5, hatch="//", label="processing (warm-up)")),
                         (skipped, dict(color="0.75", label="processing (diffusion skipped)"))):
        if mask.any():
            rows = stream[mask]
            ax.barh(rows["batch"], rows["finished_s"] - rows["started_s"], left=rows["started_s"], height=0.6,
                    **kwargs)
    ax.plot(stream["written_s"], y, "o", color="k", ms=3, label="written")
    captured = (stream["first_frame"] + stream["frames"]) / FPS
    ax.plot(captured, y, "--", color="C2", lw=1, label="last frame captured (25 fps)")
    first = stream.iloc[0]
    # playback starts when the first batch is written; frame i is then due (i − its first frame) / 25 s later
    deadline = first["written_s"] + (stream["first_frame"] - first["first_frame"]) / FPS
    ax.plot(deadline, y, ":", color="C3", lw=1.5, label="25-fps playback deadline")
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the stream started")
    ax.set_ylabel("batch")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return ax


def frame_latency_plot(latencies: dict[str, pd.DataFrame], ax=None):
    """Latency of every frame (results.frame_latencies), one line per run label; warm-up frames dotted."""
    ax = ax or plt.subplots(figsize=(9, 3.5))[1]
    for i, (label, lat) in enumerate(latencies.items()):
        ax.plot(lat["frame"], lat["latency_s"], color=f"C{i}", lw=1.2, label=label)
        warm = lat[lat["warmup"]]
        if len(warm):
            ax.plot(warm["frame"], warm["latency_s"], ".", color=f"C{i}", ms=3)
    ax.set_xlabel("frame (dots: warm-up batches)")
    ax.set_ylabel("latency, s (written − captured)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    return ax


def method_bars(table: pd.DataFrame, value: str = "ms_per_frame"):
    """bench.align_restore_timings as grouped bars: one panel per stage (align, restore), one group per frame size
    (and device), one bar per method."""
    stages = list(dict.fromkeys(table["stage"]))
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = table[table["stage"] == stage]
        group = rows["size"] + (" " + rows["device"] if rows["device"].nunique() > 1 else "")
        rows.assign(group=group).pivot_table(index="group", columns="method", values=value, sort=False).plot.bar(
            ax=ax, rot=0, width=0.8)
        ax.set_title(stage)
        ax.set_xlabel("")
        ax.set_ylabel("ms per frame" if value == "ms_per_frame" else value)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def difference_maps(diffs: dict, vmax: float | None = None):
    """bench.pixel_differences as images: the cv2 and kornia results and |kornia − cv2| (grey levels, mean over
    RGB), for the aligned crop (top) and the pasted-back region of the frame (bottom)."""
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for row, (what, title) in zip(axes, (("crop", "aligned crop"), ("frame", "pasted back (paste ROI)"))):
        row[0].imshow(diffs[f"{what}_cv2"])
        row[0].set_title(f"{title}: cv2")
        row[1].imshow(diffs[f"{what}_kornia"])
        row[1].set_title(f"{title}: kornia")
        image = row[2].imshow(diffs[f"{what}_diff"], cmap="magma", vmin=0, vmax=vmax)
        key = "crop" if what == "crop" else "roi"
        row[2].set_title(f"|kornia − cv2|: mean {diffs[f'{key}_mean_abs']:.2f}, max {diffs[f'{key}_max_abs']:.0f}")
        fig.colorbar(image, ax=row[2], fraction=0.046, pad=0.04, label="grey levels")
        for ax in row:
            ax.set_axis_off()
    fig.suptitle(f"{diffs['size']} frame; outside the paste ROI the frames differ by at most "
                 f"{diffs['outside_max_abs']} grey levels")
    fig.tight_layout()
    return fig


def audio_front_end_plot(table: pd.DataFrame, cosine: pd.DataFrame):
    """bench.audio_drift: cost per frame against the 40 ms a frame lasts at 25 fps (left), and each frame's cosine
    similarity to the offline features over the clip (right)."""
    fig, (cost, drift) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw=dict(width_ratios=[1, 2]))
    cost.barh(table["front_end"], table["ms_per_frame"], color=[f"C{i}" for i in range(len(table))])
    cost.axvline(1000 / FPS, color="k", ls="--", lw=1, label="one frame at 25 fps")
    cost.invert_yaxis()
    cost.set_xlabel("ms per frame (streamed)")
    cost.legend(fontsize="small")
    for i, label in enumerate(cosine.columns):
        drift.plot(cosine.index / FPS, cosine[label], color=f"C{i}", lw=1, label=label)
    drift.set_xlabel("seconds")
    drift.set_ylabel("cosine to offline whisper")
    drift.legend(fontsize="small")
    fig.tight_layout()
    return fig


def trace_plot(top: pd.DataFrame, shares: pd.DataFrame):
    """traces.top_operators (self time, left) and traces.stage_shares (each top-level stage's share, and the
    diffusion sub-stages' shares of diffusion, right)."""
    fig, (ops, stages) = plt.subplots(1, 2, figsize=(13, 0.3 * max(len(top), 6) + 1.5))
    ops.barh(top["name"], top["self_ms"], color="C0")
    ops.invert_yaxis()
    ops.set_xlabel("self time, ms (all recorded batches)")
    ops.tick_params(axis="y", labelsize="small")
    rows = shares.assign(group=np.where(shares["parent"].isna(), "stages", "within " + shares["parent"].fillna("")))
    left = {}
    order = [key for key, _, _ in STAGES]
    colours = plt.get_cmap("tab20")  # 20 distinct colours: one per stage (there are 14), the same in every run
    for r in rows.itertuples():
        start = left.get(r.group, 0.0)
        stages.barh(r.group, r.share * 100, left=start, color=colours(order.index(r.stage) % 20), label=r.label,
                    edgecolor="white")
        left[r.group] = start + r.share * 100
    stages.set_xlabel("% of the time")
    stages.set_xlim(0, 100)
    stages.invert_yaxis()
    stages.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize="small")
    fig.tight_layout()
    return fig


def latency_timelines(streams: dict[str, pd.DataFrame]):
    """`latency_timeline` of several runs (label → results.read_stream), stacked on one time axis."""
    height = sum(0.28 * len(s) + 1.2 for s in streams.values())
    fig, axes = plt.subplots(len(streams), 1, figsize=(10, height + 0.6), sharex=True, squeeze=False)
    for ax, (label, stream) in zip(axes[:, 0], streams.items()):
        latency_timeline(stream, ax=ax)
        ax.set_title(label, loc="left")
        if ax is not axes[0, 0]:
            ax.get_legend().remove()
    fig.tight_layout()
    return fig


def tflops_bars(df: pd.DataFrame, by: str = "variant",
                stages: tuple[str, ...] = ("audio", "mask_latents", "image_latents", "denoise", "decode"), ax=None):
    """Achieved TFLOP/s of the model stages (summary.json's, lipsync_lab/flops.py: counted FLOPs of a full batch /
    the stage's median), one group of bars per `by` value of the collected runs `df`, each bar labelled with its
    value and, on a device of known peak, its % of that peak."""
    import json

    rows = []
    for run_dir, group in df.groupby("run_dir", sort=False):
        record = json.loads((Path(run_dir) / "summary.json").read_text())
        for key in stages:
            s = record.get("summary", {}).get("stages", {}).get(key, {})
            if s.get("tflops") is not None:
                rows.append(dict(by=group[by].iloc[0], stage=key, tflops=s["tflops"], peak=s.get("peak_fraction")))
    if not rows:
        raise ValueError("no achieved TFLOP/s in these runs' summaries (runs from before FLOPs were counted?)")
    table = pd.DataFrame(rows)
    order = [k for k in stages if k in set(table["stage"])]
    values = table.pivot_table(index="by", columns="stage", values="tflops", sort=False)[order]
    peaks = table.pivot_table(index="by", columns="stage", values="peak", sort=False).reindex_like(values)
    ax = ax or plt.subplots(figsize=(8, 0.5 * len(values) * len(order) ** 0.5 + 1.5))[1]
    values.rename(columns=LABELS).plot.barh(ax=ax, width=0.8)
    for container, key in zip(ax.containers, order):
        labels = [f"{v:.3g}" + (f" ({100 * p:.0f}% of peak)" if pd.notna(p) else "")
                  for v, p in zip(values[key], peaks[key])]
        ax.bar_label(container, labels=labels, fontsize="x-small", padding=2)
    ax.margins(x=0.2)  # room for the labels
    ax.set_xlabel("achieved TFLOP/s (counted FLOPs / median seconds)")
    ax.set_ylabel("")
    ax.invert_yaxis()
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return ax


def memory_bars(df: pd.DataFrame, by: str = "variant", ax=None):
    """Memory per run of the collected runs `df` (summary.json's `memory`): on CUDA the device memory the models
    hold and what inference adds at its peak, stacked (diffusers' "model" and "inference" memory), beside the
    process's peak resident memory; on the CPU resident memory only, and the axis says so."""
    import json

    rows = []
    for run_dir, group in df.groupby("run_dir", sort=False):
        memory = json.loads((Path(run_dir) / "summary.json").read_text()).get("summary", {}).get("memory")
        if memory:
            rows.append(dict(by=group[by].iloc[0], model=memory.get("model_mb"), inference=memory.get("inference_mb"),
                             rss=memory.get("rss_peak_mb")))
    if not rows:
        raise ValueError("no memory figures in these runs' summaries (runs from before memory was recorded?)")
    table = pd.DataFrame(rows).set_index("by")
    device = table["model"].notna().any()
    ax = ax or plt.subplots(figsize=(8, 0.5 * len(table) + 1.5))[1]
    if device:
        table[["model", "inference"]].rename(columns={"model": "device: models", "inference": "device: inference"}) \
            .plot.barh(stacked=True, ax=ax, width=0.4, position=1)
        table[["rss"]].rename(columns={"rss": "host: peak RSS"}).plot.barh(ax=ax, width=0.4, position=0,
                                                                           color="grey")
        ax.set_xlabel("MB (device: CUDA allocator; host: resident memory high-water mark)")
    else:
        table[["rss"]].rename(columns={"rss": "peak RSS"}).plot.barh(ax=ax, width=0.7, color="grey")
        ax.set_xlabel("MB of resident memory (peak; a CPU run has no device memory)")
    for container in ax.containers:
        ax.bar_label(container, fmt="%.0f", fontsize="x-small", padding=2)
    ax.margins(x=0.15)
    ax.set_ylabel("")
    ax.invert_yaxis()
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return ax


def speed_vs_drift(trials: pd.DataFrame, ax=None):
    """A search's trials (search.read_trials / trials_frame): sustained fps against drift (mean |Δ| grey levels
    against the reference run) — or against SyncNet's LSE-C in a sync search (objective=sync) — one dot per finished
    trial labelled by its number, the Pareto front drawn as the staircase it bounds (faster and closer are better:
    right and down; for LSE-C right and up), the enqueued seed variants starred and named. Failed trials have no
    point: the title counts them."""
    from lipsync_lab.search import second

    y = second(trials)
    done = trials[trials["state"] == "COMPLETE"]
    ax = ax or plt.subplots(figsize=(8, 5))[1]
    ax.scatter(done["fps"], done[y], s=28, color="C0", alpha=0.7, label="trial", zorder=2)
    for r in done.itertuples():
        ax.annotate(str(r.number), (r.fps, getattr(r, y)), textcoords="offset points", xytext=(4, 3),
                    fontsize="x-small", color="0.3")
    front = done[done["pareto"].astype(bool)].sort_values("fps")
    if len(front):
        # a point dominates everything slower and with more drift (less LSE-C): the front's staircase bounds
        # that region
        ax.step(front["fps"], front[y], where="pre", color="C3", lw=1.2, zorder=1)
        ax.scatter(front["fps"], front[y], s=220, facecolor="none", edgecolor="C3", lw=1.5,
                   label="Pareto front", zorder=5)  # a ring drawn over the stars, so a seed on the front shows both
    seeds = done[done["seed_variant"].fillna("").astype(str) != ""]
    colours = [f"C{i}" for i in (1, 2, 4, 5, 6, 8, 9)]  # not the trials' C0 nor the front's C3
    for i, r in enumerate(seeds.itertuples()):  # named in the legend: the seed's variants often lie close together
        ax.scatter([r.fps], [getattr(r, y)], s=150, marker="*", color=colours[i % len(colours)], edgecolor="k",
                   lw=0.5, label=f"seed: {r.seed_variant}", zorder=4)
    failed = int((trials["state"] == "FAIL").sum())
    ax.set_title(f"{len(done)} trials" + (f" ({failed} failed, not shown)" if failed else "")
                 + f"; {len(front)} on the Pareto front")
    ax.set_xlabel("sustained fps (higher is better)")
    ax.set_ylabel("SyncNet confidence LSE-C (higher is better)" if y == "lse_c" else
                  "drift: mean |Δ| grey levels vs the reference (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def speed_vs_sync(table: pd.DataFrame, ax=None):
    """A comparison table (compare.compare): each finished run's speed (stream fps where measured, else fps)
    against SyncNet's confidence LSE-C of its output, labelled by run. Runs scored on random SyncNet weights are drawn
    hollow and grey and the title says they judge nothing; runs without scores are counted in the title (run with
    quality=syncnet, or `python -m lipsync_lab.quality <sweep>`)."""
    ax = ax or plt.subplots(figsize=(8, 5))[1]
    done = table[table["status"] == "ok"]
    scored = done[done["lse_c"].notna()] if "lse_c" in done else done.iloc[:0]
    speed = "stream_fps" if "stream_fps" in scored and scored["stream_fps"].notna().all() else "fps"
    random = scored["sync_random_weights"].fillna(False).astype(bool) if len(scored) else pd.Series(dtype=bool)
    for flag, part in ((False, scored[~random]), (True, scored[random])):
        if len(part):
            ax.scatter(part[speed], part["lse_c"], s=40, facecolor="none" if flag else "C0",
                       edgecolor="0.5" if flag else "C0", label="random SyncNet weights" if flag else "run")
            for r in part.itertuples():
                ax.annotate(str(r.run).split("_", 1)[0], (getattr(r, speed), r.lse_c), textcoords="offset points",
                            xytext=(4, 3), fontsize="x-small", color="0.3")
    missing = len(done) - len(scored)
    title = f"{len(scored)} run(s) scored" + (f"; {missing} without SyncNet scores (quality=syncnet)" if missing else
                                             "")
    if random.any():
        title += "\nRANDOM SyncNet weights: these points check the code path and judge nothing"
    ax.set_title(title)
    ax.set_xlabel(f"{'stream fps' if speed == 'stream_fps' else 'fps'} (higher is better)")
    ax.set_ylabel("SyncNet confidence LSE-C (higher is better)")
    ax.grid(alpha=0.3)
    if len(scored):
        ax.legend(fontsize="small")
    return ax


def mouth_panels(runs: dict[str, dict], baseline: str, frames: int = 4, margin: int = 8) -> dict:
    """The pictures of a contact sheet, as arrays: for up to `frames` frames every run has (spread over them), each
    run's mouth — the crops.npz crop cut to the regenerated region's box plus `margin` pixels — and, for each run but
    the baseline, |run − baseline| in grey levels (the mean over the colour channels) over the same box.
    runs: name → compare.load_crops(...) (None: no crops). Returns dict(frames, names, mouths[name] (k, h, w, 3)
    uint8, diffs[name] (k, h, w) float, box)."""
    have = {name: c for name, c in runs.items() if c is not None}
    if baseline not in have:
        raise ValueError(f"the baseline {baseline!r} has no crops")
    common = set(have[baseline]["frames"].tolist())
    for c in have.values():
        if c["crops"].shape[1:] == have[baseline]["crops"].shape[1:]:
            common &= set(c["frames"].tolist())
    if not common:
        raise ValueError("the runs have no generated frame in common")
    common = sorted(common)
    picked = [common[i] for i in np.linspace(0, len(common) - 1, min(frames, len(common))).round().astype(int)]
    rows, cols = np.nonzero(have[baseline]["regenerated"])
    res = have[baseline]["crops"].shape[1]
    box = (max(0, rows.min() - margin), min(res, rows.max() + 1 + margin),
           max(0, cols.min() - margin), min(res, cols.max() + 1 + margin))
    names = [baseline] + [n for n in have if n != baseline and have[n]["crops"].shape[1:] == (res, res, 3)]

    def mouths(c):
        index = {int(f): i for i, f in enumerate(c["frames"])}
        return np.stack([c["crops"][index[f]][box[0]:box[1], box[2]:box[3]] for f in picked])

    out = {n: mouths(have[n]) for n in names}
    base = out[baseline].astype(np.float64)
    diffs = {n: np.abs(out[n].astype(np.float64) - base).mean(-1) for n in names if n != baseline}
    return dict(frames=picked, names=names, mouths=out, diffs=diffs, box=box)


def contact_sheet(runs: dict[str, dict], baseline: str, frames: int = 4, vmax: float | None = None):
    """A figure of `mouth_panels`: one row per run (the baseline first), and per frame the run's mouth beside its
    |Δ| map against the baseline (one colour scale for the whole sheet, its maximum in the title) — what a cache
    or guidance variant changed, to look at before trusting its drift figure."""
    panels = mouth_panels(runs, baseline, frames)
    names, picked = panels["names"], panels["frames"]
    top = vmax or max([float(d.max()) for d in panels["diffs"].values()] + [1.0])
    fig, axes = plt.subplots(len(names), 2 * len(picked), squeeze=False,
                             figsize=(2.0 * 2 * len(picked), 2.1 * len(names) + 0.6))
    image = None
    for r, name in enumerate(names):
        for c, frame in enumerate(picked):
            ax_mouth, ax_diff = axes[r, 2 * c], axes[r, 2 * c + 1]
            ax_mouth.imshow(panels["mouths"][name][c])
            if name in panels["diffs"]:
                image = ax_diff.imshow(panels["diffs"][name][c], cmap="magma", vmin=0, vmax=top)
                ax_diff.set_title(f"|Δ| mean {panels['diffs'][name][c].mean():.2f}", fontsize="x-small")
            if r == 0:
                ax_mouth.set_title(f"frame {frame}", fontsize="small")
            for ax in (ax_mouth, ax_diff):
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_frame_on(name in panels["diffs"] or ax is ax_mouth)
        axes[r, 0].set_ylabel(("* " if name == baseline else "") + name, fontsize="x-small", rotation=0,
                              ha="right", va="center")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="|Δ| grey levels")
    fig.suptitle(f"generated mouths, baseline * first; |Δ| against it (scale 0–{top:.0f} grey levels)",
                 fontsize="small")
    return fig


def _stage_colour(stage: str):
    """One colour per stage key, the same in every trace figure (trace_plot's); GPU work in fixed greys/oranges."""
    fixed = {"kernel": "0.35", "gpu_memcpy": "tab:orange", "gpu_memset": "tab:brown", "other": "0.7"}
    if stage in fixed:
        return fixed[stage]
    order = [key for key, _, _ in STAGES]
    return plt.get_cmap("tab20")(order.index(stage) % 20) if stage in order else "0.5"


def stage_timeline_plot(timeline: pd.DataFrame, title: str = ""):
    """traces.stage_timeline: one lane per thread (or GPU stream), each stage range a bar — top-level stages full
    height, sub-stages (diffusion's) a thinner bar inside; bars of different batches side by side on different
    lanes are the pipelined executor's overlap."""
    lanes = list(dict.fromkeys(timeline.sort_values("start_ms")["lane"]))
    fig, ax = plt.subplots(figsize=(13, 0.55 * max(len(lanes), 4) + 1.4))
    seen = set()
    for r in timeline.itertuples():
        y = lanes.index(r.lane)
        inner = isinstance(r.parent, str)
        height = 0.4 if inner else 0.8
        label = None if r.label in seen else r.label
        seen.add(r.label)
        ax.broken_barh([(r.start_ms, r.dur_ms)], (y - height / 2, height), facecolors=_stage_colour(r.stage),
                       edgecolor="white", linewidth=0.3, label=label)
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the first recorded event")
    ax.set_title(title or "stage ranges per thread")
    # beside the lanes: below them it would cover the axis label of a figure with one or two lanes
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=2 if len(seen) > 6 else 1, fontsize="small")
    fig.tight_layout()
    return fig


def stage_operators_plot(table: pd.DataFrame, cols: int = 3):
    """traces.stage_operators: one panel per stage, its top operators by self time (ms, all recorded batches)."""
    stages = list(dict.fromkeys(table["stage"]))
    rows = max(1, -(-len(stages) // cols))
    per = max(table.groupby("stage").size().max() if len(table) else 1, 1)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, rows * (0.3 * per + 1.2)), squeeze=False)
    for ax, stage in zip(axes.flat, stages):
        mine = table[table["stage"] == stage]
        ax.barh(mine["name"], mine["self_ms"], color=_stage_colour(stage))
        ax.invert_yaxis()
        ax.set_title(mine["label"].iloc[0], fontsize="medium")
        ax.tick_params(axis="y", labelsize="x-small")
        ax.set_xlabel("self ms", fontsize="small")
    for ax in list(axes.flat)[len(stages):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def trace_diff_plot(stages: pd.DataFrame, operators: pd.DataFrame, before: str = "baseline",
                    after: str = "variant"):
    """traces.stage_diff (each stage's ms before and after, left) and traces.operator_diff (the operators whose
    self time changed most: after − before, right; red slower, green faster)."""
    height = 0.3 * max(len(stages), len(operators), 6) + 1.5
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, height))
    y = np.arange(len(stages))
    left.barh(y - 0.2, stages["ms_before"], height=0.4, label=before, color="0.6")
    left.barh(y + 0.2, stages["ms_after"], height=0.4, label=after, color="C0")
    left.set_yticks(y, [("  " if isinstance(p, str) else "") + lab for lab, p in zip(stages["label"],
                                                                                     stages["parent"])])
    left.invert_yaxis()
    left.set_xlabel("ms (all recorded batches)")
    left.legend(fontsize="small")
    colours = np.where(operators["delta_ms"] > 0, "tab:red", "tab:green")
    right.barh(operators["name"], operators["delta_ms"], color=colours)
    right.axvline(0, color="black", lw=0.8)
    right.invert_yaxis()
    right.tick_params(axis="y", labelsize="small")
    right.set_xlabel(f"self ms, {after} − {before}")
    fig.tight_layout()
    return fig


def cuda_review_plot(cuda: dict):
    """traces.cuda_analyses (HolisticTraceAnalysis): GPU time by kernel type (compute, copies, their overlap), the
    top kernels' summed time, idle time per stream by cause, and the launch delays."""
    fig, axes = plt.subplots(2, 2, figsize=(14, 8))
    types, kernels, idle, launch = cuda["kernel_types"], cuda["kernels"], cuda["idle"], cuda["launch"]
    axes[0, 0].barh(types["kernel_type"], types["sum"] / 1000.0, color="C1")
    axes[0, 0].invert_yaxis()
    axes[0, 0].set_xlabel("ms on the GPU")
    axes[0, 0].set_title("by kernel type")
    axes[0, 1].barh(kernels["name"].str.slice(0, 50), kernels["sum (us)"] / 1000.0, color="0.35")
    axes[0, 1].invert_yaxis()
    axes[0, 1].tick_params(axis="y", labelsize="x-small")
    axes[0, 1].set_xlabel("ms")
    axes[0, 1].set_title("top kernels")
    pivot = idle.pivot_table(index="stream", columns="idle_category", values="idle_time", aggfunc="sum") / 1000.0
    pivot.plot.barh(stacked=True, ax=axes[1, 0])
    axes[1, 0].set_xlabel("idle ms")
    axes[1, 0].set_title("GPU idle time per stream")
    axes[1, 1].hist(launch["launch_delay"], bins=30, color="C2")
    axes[1, 1].set_xlabel("launch delay, µs (kernel start − runtime call end)")
    axes[1, 1].set_title("kernel launches")
    fig.tight_layout()
    return fig
