"""Run results: tidy timings (parquet), a summary (json), and collection of many runs into one DataFrame.

timings.parquet — one row per batch × stage, plus one row per denoising step:
  run_id, batch, stage (key), label (printed label), parent (None = top-level stage; 'diffusion' for its eight
  sub-stages; 'denoise' for step rows), step (−1, or the step index), timestep (−1, or the scheduler's t),
  seconds, start_s (stage start since the stream began), frames (in the batch), face_frames, landmarks_cached
  (frames whose landmarks were read from the landmark cache: the face stage then measured a read), warmup,
  peak_allocated_mb / peak_reserved_mb (the device's peak memory while the stage ran: CUDA, stages not
  overlapping; NaN otherwise), rss_mb (the process's resident memory when the stage ended), unet_frames /
  unet_frames_shallow (the batch's UNet frame-evaluations, all / of a cheaper callable such as a shallow DeepCache
  step).
A batch's total is the sum of its top-level rows (parent is null). `skipped` says why diffusion did not run in a
batch: "" (it ran), "no_face", "silent" (voice-activity gating).

stream.parquet — one row per batch, the stream as it happened (seconds since the stream started, on one clock):
  run_id, batch, first_frame (absolute index of its first frame), frames, warmup, paced (source.pace=realtime),
  arrived_s (its last frame and its audio look-ahead existed: released by the pacer, or decoded when unpaced),
  waited_s (time the reader waited for a paced source), started_s / finished_s (its first processing stage
  started / its last ended), written_s (the sink took its frames), skipped, rss_mb (the process's resident
  memory then). Frame i of a paced stream is released at (i + 1) / 25 s (media/pace.py); its latency is the
  batch's written_s minus that; unpaced, the batch's arrived_s stands for every frame's release.
"""

from __future__ import annotations

import glob
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lipsync_lab.media.source import FPS
from lipsync_lab.recording import stream_table, timings_table
from lipsync_lab.timing import LABELS, MEMORY_COLUMNS, STAGES, STEP_STAGE, rss_peak_mb


def timings_frame(rows: list[dict]) -> pd.DataFrame:
    """Timing rows (BatchTimer.rows) as timings.parquet holds them (recording.TIMINGS_SCHEMA)."""
    return timings_table(rows).to_pandas()


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
        # memory: the highest over every batch, warm-up included (what the stage needs, not a typical value)
        for column in MEMORY_COLUMNS:
            if column in df:
                peak = df.loc[df["stage"] == key, column].max()
                stages[key][column] = None if pd.isna(peak) else float(peak)
    return dict(
        batches=int(len(totals)), steady_batches=int(len(steady)) if not includes_warmup else 0,
        includes_warmup=bool(includes_warmup), frames=int(totals["frames"].sum()),
        steady_frames=int(steady["frames"].sum()),
        batch_total_median=float(steady["seconds"].median()), batch_total_p10=float(steady["seconds"].quantile(0.1)),
        batch_total_p90=float(steady["seconds"].quantile(0.9)),
        fps=float(steady["frames"].sum() / steady["seconds"].sum()),
        rtf_median=float(steady["rtf"].median()), stages=stages,
        # what a steady batch cost the UNet: frame-evaluations (clips × frames per call), and of them shallow ones
        unet_frames_per_batch=_batch_median(rows, "unet_frames"),
        unet_frames_shallow_per_batch=_batch_median(rows, "unet_frames_shallow"),
    )


def _batch_median(rows: pd.DataFrame, column: str) -> float | None:
    """Median over batches of a per-batch column (repeated on each of a batch's rows); None if absent."""
    if column not in rows or rows.empty:
        return None
    return float(rows.groupby("batch")[column].first().median())


def format_summary(summary: dict) -> str:
    """The per-stage median table printed at the end of a run."""
    st = summary["stages"]
    scope = "all batches (no steady-state batch: every batch was warm-up)" if summary["includes_warmup"] else \
        f"{summary['steady_batches']} steady-state batches (warm-up excluded)"
    # achieved TFLOP/s (lipsync_lab/flops.py) for the stages with a model, and % of the device's peak where known
    tf = any(s.get("tflops") is not None for s in st.values())
    peak = tf and summary.get("peak_tflops") is not None

    def achieved(s: dict) -> str:
        if not tf:
            return ""
        cells = f"{s['tflops']:>9.3f}" if s.get("tflops") is not None else " " * 9
        if peak:
            cells += f"{100 * s['peak_fraction']:>7.1f}%" if s.get("peak_fraction") is not None else " " * 8
        return cells

    lines = [f"Summary over {scope}, {summary['steady_frames']} frames",
             f"{'stage':<34}{'median s':>10}{'p10':>9}{'p90':>9}{'share':>8}"
             + (f"{'TFLOP/s':>9}" if tf else "") + (f"{'peak':>8}" if peak else "")]
    # each stage's peak device memory, where measured (CUDA, stages not overlapping)
    mem = any(s.get("peak_allocated_mb") is not None for s in st.values())
    if mem:
        lines[1] += f"{'peak MB':>9}"

    def memory(s: dict) -> str:
        return "" if not mem else f"{s['peak_allocated_mb']:>9.0f}" if s.get("peak_allocated_mb") is not None \
            else " " * 9

    total = summary["batch_total_median"]
    for key, label, parent in STAGES:
        if key not in st:
            continue
        s = st[key]
        name = ("    " if parent else "") + label
        share = "" if parent else f"{100 * s['median'] / total:7.1f}%" if total else ""
        lines.append(f"{name:<34}{s['median']:>10.4f}{s['p10']:>9.4f}{s['p90']:>9.4f}{share:>8}{achieved(s)}"
                     f"{memory(s)}")
        if key == "denoise" and STEP_STAGE[0] in st:
            s = st[STEP_STAGE[0]]
            lines.append(f"{'    ' + LABELS[STEP_STAGE[0]]:<34}{s['median']:>10.4f}{s['p10']:>9.4f}{s['p90']:>9.4f}"
                         f"{'':>8}{achieved(s)}")
    lines.append(f"{'Total per batch':<34}{total:>10.4f}{summary['batch_total_p10']:>9.4f}"
                 f"{summary['batch_total_p90']:>9.4f}")
    lines.append(f"Throughput {summary['fps']:.2f} fps; real-time factor (batch time / batch duration) median "
                 f"{summary['rtf_median']:.2f} (< 1 keeps up with 25 fps)")
    if mem:
        lines.append("peak MB: the device's peak allocated memory while the stage ran (CUDA), any batch")
    if summary.get("stages_overlap"):
        lines.append("(pipelined: stages overlap, so batch time = summed stage times is work, not wall time; the "
                     "stream's measured rate is below)")
    if tf:
        lines.append("TFLOP/s: counted FLOPs of a full batch (matmuls, convolutions, attention) / median"
                     + (f"; peak = {summary['peak_basis']} {summary['peak_tflops']:g} TFLOP/s" if peak else ""))
    return "\n".join(lines)


# -- the stream as it happened (stream.parquet) ----------------------------------------------------------------

MEMORY_SLOPE_MIN_S = 60.0


def stream_frame(records: list[dict]) -> pd.DataFrame:
    """Per-batch stream records as stream.parquet holds them (recording.STREAM_SCHEMA)."""
    return stream_table(records).to_pandas()


def read_stream(run_dir: str | os.PathLike) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / "stream.parquet")


def frame_latencies(stream: pd.DataFrame) -> pd.DataFrame:
    """One row per frame: frame, batch, warmup, release_s (it existed), written_s, latency_s (written − release)."""
    rows = []
    for b in stream.itertuples():
        frames = np.arange(b.first_frame, b.first_frame + b.frames)
        release = (frames + 1) / FPS if b.paced else np.full(b.frames, b.arrived_s)
        rows.append(pd.DataFrame(dict(frame=frames, batch=b.batch, warmup=b.warmup, release_s=release,
                                      written_s=b.written_s)))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["frame", "batch", "warmup", "release_s", "written_s"])
    out["latency_s"] = out["written_s"] - out["release_s"]
    return out


def _slope_per_min(x: pd.Series, y: pd.Series) -> float | None:
    """Least-squares slope of y per minute of x (seconds); None with fewer than 3 points."""
    if len(x) < 3 or float(np.ptp(x)) <= 0:
        return None
    return float(np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0] * 60)


def stream_summary(stream: pd.DataFrame) -> dict:
    """Latency and throughput measured on the stream: first-frame latency (the stream's first frame, warm-up
    included: a viewer waits for it), latency percentiles over steady-state frames, sustained output fps (frames
    written after the first batch over the time they took), how fast latency grows (≈ 0 when the stream keeps up
    with its input) and resident memory's slope."""
    lat = frame_latencies(stream)
    steady = lat[~lat["warmup"]] if (~lat["warmup"]).any() else lat
    later = stream.iloc[1:]
    span = float(stream["written_s"].iloc[-1] - stream["written_s"].iloc[0]) if len(stream) > 1 else 0.0
    steady_batches = stream[~stream["warmup"]] if (~stream["warmup"]).any() else stream
    # growth: fitted over each batch's last frame (within a batch latency falls frame by frame, a sawtooth)
    last = lat.groupby("batch").last()
    last = last[last.index.isin(steady_batches["batch"])]
    latency_slope = _slope_per_min(last["release_s"], last["latency_s"])
    return dict(
        paced=bool(stream["paced"].iloc[0]),
        first_frame_latency_s=float(lat["latency_s"].iloc[0]),
        latency_p50_s=float(steady["latency_s"].median()), latency_p90_s=float(steady["latency_s"].quantile(0.9)),
        latency_p99_s=float(steady["latency_s"].quantile(0.99)), latency_max_s=float(steady["latency_s"].max()),
        # seconds of latency gained per second of stream: 0 keeps up, 0.5 = the input outruns the output by half
        # (paced streams only: unpaced, a frame's "release" is whenever the reader got to it)
        latency_growth=None if latency_slope is None or not stream["paced"].iloc[0] else latency_slope / 60,
        sustained_fps=float(later["frames"].sum() / span) if span > 0 else None,
        # seconds of output time per second of media at that rate: <= 1 keeps up (paced input caps it near 1)
        rtf=float(FPS * span / later["frames"].sum()) if span > 0 else None,
        rss_mb_max=float(stream["rss_mb"].max()),
        # over a minute or more only: a short stream's slope is the allocator settling, not a trend
        rss_slope_mb_per_min=_slope_per_min(steady_batches["written_s"], steady_batches["rss_mb"])
        if float(np.ptp(steady_batches["written_s"])) >= MEMORY_SLOPE_MIN_S else None,
        skipped_batches={k: int(v) for k, v in stream["skipped"].value_counts().items() if k},
    )


def format_stream(s: dict) -> str:
    growth = "" if s["latency_growth"] is None else f"; latency grows {s['latency_growth']:+.3f} s per s of stream"
    fps = "n/a (one batch)" if s["sustained_fps"] is None else f"{s['sustained_fps']:.2f} fps (RTF {s['rtf']:.2f})"
    slope = s["rss_slope_mb_per_min"]
    memory = f"resident memory max {s['rss_mb_max']:.0f} MB" + ("" if slope is None else f", {slope:+.2f} MB/min")
    skipped = "".join(f"; {n} batch(es) skipped ({why})" for why, n in s["skipped_batches"].items())
    return (f"Stream ({'paced at 25 fps' if s['paced'] else 'unpaced: frames taken as fast as decoded'}): "
            f"first-frame latency {s['first_frame_latency_s']:.2f} s; latency p50 {s['latency_p50_s']:.2f} / "
            f"p90 {s['latency_p90_s']:.2f} / max {s['latency_max_s']:.2f} s{growth}; sustained {fps}; "
            f"{memory}{skipped}")


# -- memory ---------------------------------------------------------------------------------------------------


def memory_summary(memory, streamed) -> dict:
    """summary["memory"]: what the models hold and what inference adds on the device (CUDA; diffusers' "model
    memory" and "inference memory"), and the process's resident memory. `memory`: timing.ModelMemory, `streamed`:
    the executor's StreamResult. On the CPU, resident memory only, and it says so."""
    out = dict(measured="device memory (CUDA allocator) and resident memory" if memory.cuda else
               "resident memory (RSS) only: a CPU run has no device memory",
               rss_before_build_mb=memory.rss_before_mb, rss_after_build_mb=memory.rss_built_mb,
               rss_peak_mb=rss_peak_mb())
    if memory.cuda:
        stream_peak = None if math.isnan(streamed.peak_allocated_mb) else streamed.peak_allocated_mb - memory._base
        peaks = [p for p in (memory.warmup_peak_mb, stream_peak) if p is not None]
        out.update(model_mb=memory.model_mb, warmup_peak_mb=memory.warmup_peak_mb, stream_peak_allocated_mb=stream_peak,
                   stream_peak_reserved_mb=None if math.isnan(streamed.peak_reserved_mb) else streamed.peak_reserved_mb,
                   inference_mb=max(peaks) - memory.model_mb if peaks and memory.model_mb is not None else None)
    return out


def format_memory(m: dict) -> str:
    rss = f"resident memory {m['rss_after_build_mb'] or 0:.0f} MB after building, peak {m['rss_peak_mb']:.0f} MB"
    if m.get("model_mb") is None:
        return f"Memory (RSS only: a CPU run has no device memory): {rss}"
    inference = "" if m.get("inference_mb") is None else f", inference +{m['inference_mb']:.0f} MB"
    reserved = "" if m.get("stream_peak_reserved_mb") is None else \
        f" (stream peak reserved {m['stream_peak_reserved_mb']:.0f} MB)"
    return f"Device memory: models {m['model_mb']:.0f} MB{inference}{reserved}; {rss}"


# -- the run folder's status ------------------------------------------------------------------------------------

STATUSES = ("ok", "interrupted", "failed", "incomplete")


def _write_record(run_dir: str | os.PathLike, record: dict) -> None:
    """summary.json, replaced atomically: a reader (or a kill) never sees half a file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, run_dir / "summary.json")


def write_running(run_dir: str | os.PathLike, meta: dict) -> None:
    """Written when a run starts: a run killed before it ends (SIGKILL, power loss) leaves this, and the collectors
    list its folder as incomplete."""
    _write_record(run_dir, dict(status="running", pid=os.getpid(), meta=meta))


def write_run(run_dir: str | os.PathLike, record: dict) -> None:
    """The finished run's record: status (ok | interrupted), meta, summary."""
    _write_record(run_dir, record)


def write_ended(run_dir: str | os.PathLike, status: str, error: BaseException | str, meta: dict) -> None:
    """Mark a run folder as failed or interrupted (and why), so collectors and notebooks say so instead of
    skipping it."""
    if isinstance(error, BaseException):
        reason = str(error) if str(error) else type(error).__name__
        error = f"{type(error).__name__}: {reason}"
    _write_record(run_dir, dict(status=status, error=str(error).splitlines()[0] if str(error) else status,
                                meta=meta))


def write_failed(run_dir: str | os.PathLike, error: BaseException, meta: dict) -> None:
    write_ended(run_dir, "failed", error, meta)


class CropRecorder:
    """Keeps the first `limit` generated face crops of a run (uint8, lossless) in `crops.npz` — `frames` (stream
    positions), `crops` (n, res, res, 3) and `regenerated` (res, res: 1 where the model paints, the mouth) — so
    variants can be compared on their generated pixels, not on a lossy re-encode of the output video. With
    `originals`, also the aligned input crops they were made from (`originals`, same shape): the ground truth of a
    clip driven by its own audio (quality/reconstruction.py)."""

    def __init__(self, limit: int | None, regenerated: np.ndarray, originals: bool = False):
        self.limit = int(limit or 0)
        self.regenerated = np.asarray(regenerated, np.uint8)  # the stage's regenerated_region()
        self.keep_originals = bool(originals)
        self.frames: list[int] = []
        self.crops: list[np.ndarray] = []
        self.originals: list[np.ndarray] = []

    def add(self, frames: list[int], crops: np.ndarray | None, originals: np.ndarray | None = None) -> None:
        room = self.limit - len(self.frames)
        if crops is None or room <= 0:
            return
        self.frames += list(frames[:room])
        self.crops.append(_host(crops[:room]))
        if self.keep_originals and originals is not None:
            self.originals.append(_host(originals[:room]))

    def save(self, run_dir: str | os.PathLike) -> None:
        if not self.frames:
            return
        arrays = dict(frames=np.asarray(self.frames, np.int64), crops=np.concatenate(self.crops),
                      regenerated=self.regenerated)
        if self.keep_originals and sum(map(len, self.originals)) == len(self.frames):
            arrays["originals"] = np.concatenate(self.originals)
        np.savez_compressed(Path(run_dir) / "crops.npz", **arrays)


def _host(array) -> np.ndarray:
    return array.cpu().numpy() if torch.is_tensor(array) else np.asarray(array)


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
        record = read_record(d)
        meta = record.get("meta", {})
        status, error = run_status(record)
        rows.append(dict(run_dir=d, status=status, error=error, variant=meta.get("variant"),
                         device=meta.get("device")))
    return pd.DataFrame(rows, columns=["run_dir", "status", "error", "variant", "device"])


def run_status(record: dict) -> tuple[str, str | None]:
    """(status, error) of a run folder's summary.json record (`read_record`): ok, interrupted, failed, or incomplete
    (no summary: a folder Hydra made whose run never wrote one; or `running`: started, never ended)."""
    status, error = record.get("status", "ok" if record.get("summary") else "incomplete"), record.get("error")
    if not record:
        error = "no summary.json"
    elif status == "running":  # started, never ended: killed (or still running elsewhere)
        status, error = "incomplete", "no end recorded: killed, or still running"
    elif status == "interrupted" and not error:
        s = record.get("summary", {})
        error = f"{s.get('interrupted_by')} after {s.get('frames_done')} of {s.get('frames_total')} frames"
    return status, error


def read_record(run_dir: str | os.PathLike) -> dict:
    """A run folder's summary.json ({} where there is none, or it cannot be read)."""
    path = Path(run_dir) / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


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
                    warnings.warn(f"{row.run_dir}: {row.status} run, its timings left out"
                                  + (f" ({row.error})" if row.error else ""), stacklevel=2)
                    # an interrupted run's timings cover only part of its stream: not comparable with whole runs
                    files = [f for f in files if os.path.dirname(f) != row.run_dir]
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

