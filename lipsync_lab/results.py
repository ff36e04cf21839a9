"""Run results: tidy timings (parquet), a summary (json), and collection of many runs into one DataFrame.

timings.parquet — one row per batch × stage, plus one row per denoising step:
  run_id, batch, stage (key), label (printed label), parent (None = top-level stage; 'diffusion' for its eight
  sub-stages; 'denoise' for step rows), step (−1, or the step index), timestep (−1, or the scheduler's t),
  seconds, start_s (stage start since the stream began), frames (in the batch), face_frames, landmarks_cached
  (frames whose landmarks were read from the landmark cache: the face stage then measured a read), warmup.
A batch's total is the sum of its top-level rows (parent is null).
"""

from __future__ import annotations

import glob
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lipsync_lab.media.source import FPS
from lipsync_lab.timing import LABELS, STAGES, STEP_STAGE


def timings_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    return df.astype({"batch": "int32", "step": "int32", "timestep": "int32", "frames": "int32",
                      "face_frames": "int32", "landmarks_cached": "int32", "warmup": "bool", "seconds": "float64"})


def batch_totals(df: pd.DataFrame) -> pd.DataFrame:
    """Per batch: total seconds (top-level stages), frames, warm-up flag, real-time factor."""
    top = df[df["parent"].isna()]
    g = top.groupby("batch").agg(seconds=("seconds", "sum"), frames=("frames", "first"),
                                 warmup=("warmup", "first"))
    g["rtf"] = g["seconds"] / (g["frames"] / FPS)
    return g


def summarize(df: pd.DataFrame) -> dict:
    """Medians and spread over steady-state batches (warm-up excluded; if every batch was warm-up, all are used
    and `includes_warmup` says so)."""
    totals = batch_totals(df)
    steady = totals[~totals["warmup"]]
    includes_warmup = steady.empty
    if includes_warmup:
        steady = totals
    rows = df[df["batch"].isin(steady.index)]
    stages = {}
    for key, label, parent in STAGES + [STEP_STAGE]:
        s = rows.loc[rows["stage"] == key, "seconds"]
        if s.empty:
            continue
        stages[key] = dict(label=label, parent=parent, median=float(s.median()), p10=float(s.quantile(0.1)),
                           p90=float(s.quantile(0.9)), n=int(len(s)))
    return dict(
        batches=int(len(totals)), steady_batches=int(len(steady)) if not includes_warmup else 0,
        includes_warmup=bool(includes_warmup), frames=int(totals["frames"].sum()),
        steady_frames=int(steady["frames"].sum()),
        batch_total_median=float(steady["seconds"].median()), batch_total_p10=float(steady["seconds"].quantile(0.1)),
        batch_total_p90=float(steady["seconds"].quantile(0.9)),
        fps=float(steady["frames"].sum() / steady["seconds"].sum()),
        rtf_median=float(steady["rtf"].median()), stages=stages,
    )


def format_summary(summary: dict) -> str:
    """The per-stage median table printed at the end of a run."""
    st = summary["stages"]
    scope = "all batches (no steady-state batch: every batch was warm-up)" if summary["includes_warmup"] else \
        f"{summary['steady_batches']} steady-state batches (warm-up excluded)"
    lines = [f"Summary over {scope}, {summary['steady_frames']} frames",
             f"{'stage':<34}{'median s':>10}{'p10':>9}{'p90':>9}{'share':>8}"]
    total = summary["batch_total_median"]
    for key, label, parent in STAGES:
        if key not in st:
            continue
        s = st[key]
        name = ("    " if parent else "") + label
        share = "" if parent else f"{100 * s['median'] / total:7.1f}%" if total else ""
        lines.append(f"{name:<34}{s['median']:>10.4f}{s['p10']:>9.4f}{s['p90']:>9.4f}{share:>8}")
        if key == "denoise" and STEP_STAGE[0] in st:
            s = st[STEP_STAGE[0]]
            lines.append(f"{'    ' + LABELS[STEP_STAGE[0]]:<34}{s['median']:>10.4f}{s['p10']:>9.4f}{s['p90']:>9.4f}")
    lines.append(f"{'Total per batch':<34}{total:>10.4f}{summary['batch_total_p10']:>9.4f}"
                 f"{summary['batch_total_p90']:>9.4f}")
    lines.append(f"Throughput {summary['fps']:.2f} fps; real-time factor (batch time / batch duration) median "
                 f"{summary['rtf_median']:.2f} (< 1 keeps up with 25 fps)")
    return "\n".join(lines)


def write_run(run_dir: str | os.PathLike, df: pd.DataFrame, summary: dict) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    df.to_parquet(run_dir / "timings.parquet", index=False)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def write_failed(run_dir: str | os.PathLike, error: BaseException, meta: dict) -> None:
    """Mark a run folder as failed (and why), so collectors and notebooks can say so instead of skipping it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    reason = str(error) if str(error) else type(error).__name__
    record = dict(status="failed", error=f"{type(error).__name__}: {reason}".splitlines()[0], meta=meta)
    (run_dir / "summary.json").write_text(json.dumps(record, indent=2, default=str))


class CropRecorder:
    """Keeps the first `limit` generated face crops of a run (uint8, lossless) in `crops.npz` — `frames` (stream
    positions), `crops` (n, res, res, 3) and `regenerated` (res, res: 1 where the model paints, the mouth) — so
    variants can be compared on their generated pixels, not on a lossy re-encode of the output video."""

    def __init__(self, limit: int | None, regenerated: np.ndarray):
        self.limit = int(limit or 0)
        self.regenerated = np.asarray(regenerated, np.uint8)
        self.frames: list[int] = []
        self.crops: list[np.ndarray] = []

    def add(self, frames: list[int], crops: np.ndarray | None) -> None:
        room = self.limit - len(self.frames)
        if crops is None or room <= 0:
            return
        self.frames += list(frames[:room])
        crops = crops[:room]
        self.crops.append(crops.cpu().numpy() if torch.is_tensor(crops) else np.asarray(crops))

    def save(self, run_dir: str | os.PathLike) -> None:
        if self.frames:
            np.savez_compressed(Path(run_dir) / "crops.npz", frames=np.asarray(self.frames, np.int64),
                                crops=np.concatenate(self.crops), regenerated=self.regenerated)


def _expand(paths) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        out += sorted(glob.glob(p)) or [p]
    return out


def _natural(path: str):
    """Sort key: sweep job folders by job number ('10_…' after '9_…'), others by name."""
    name = os.path.basename(os.path.normpath(path))
    head = name.split("_", 1)[0]
    return (os.path.dirname(os.path.normpath(path)), int(head) if head.isdigit() else float("inf"), name)


def run_index(paths: str | os.PathLike | list) -> pd.DataFrame:
    """One row per run folder found under `paths` (globs allowed): run_dir, status (ok | failed | incomplete: a
    folder Hydra made whose run never wrote its summary), error, variant, device. Sweep jobs in job order."""
    dirs = set()
    for match in _expand(paths):
        if not os.path.isdir(match):
            continue
        for marker in ("summary.json", ".hydra"):
            dirs |= {os.path.dirname(f) for f in glob.glob(os.path.join(match, "**", marker), recursive=True)}
    rows = []
    for d in sorted(dirs, key=_natural):
        path = os.path.join(d, "summary.json")
        record = json.loads(Path(path).read_text()) if os.path.exists(path) else {}
        meta = record.get("meta", {})
        status = record.get("status", "ok" if record.get("summary") else "incomplete")
        rows.append(dict(run_dir=d, status=status, error=record.get("error"), variant=meta.get("variant"),
                         device=meta.get("device")))
    return pd.DataFrame(rows, columns=["run_dir", "status", "error", "variant", "device"])


def collect_runs(paths: str | os.PathLike | list) -> pd.DataFrame:
    """Concatenate the timings of any run folders (globs allowed, searched recursively), each row tagged with its
    run folder, variant and device. Failed or incomplete runs have no timings: a warning names each of them."""
    frames = []
    for match in _expand(paths):
        if os.path.isfile(match) and match.endswith(".parquet"):
            files = [match]
        elif os.path.isdir(match):
            files = sorted(glob.glob(os.path.join(match, "**", "timings.parquet"), recursive=True), key=_natural)
            for row in run_index(match).itertuples():
                if row.status != "ok":
                    warnings.warn(f"{row.run_dir}: {row.status} run, no timings"
                                  + (f" ({row.error})" if row.error else ""), stacklevel=2)
        else:
            files = []
        for f in files:
            df = pd.read_parquet(f)
            run_dir = os.path.dirname(f)
            df["run_dir"] = run_dir
            meta_path = os.path.join(run_dir, "summary.json")
            meta = json.loads(Path(meta_path).read_text()).get("meta", {}) if os.path.exists(meta_path) else {}
            df["variant"] = meta.get("variant")
            df["device"] = meta.get("device")
            frames.append(df)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def stage_medians(df: pd.DataFrame, by: str = "variant", steady: bool = True) -> pd.DataFrame:
    """Median seconds per stage (columns, design order) for each `by` group: the table notebooks plot."""
    if steady:
        df = df[~df["warmup"]]
    order = [k for k, _, _ in STAGES]
    table = df[df["stage"].isin(order)].pivot_table(index=by, columns="stage", values="seconds", aggfunc="median")
    return table[[k for k in order if k in table.columns]]

