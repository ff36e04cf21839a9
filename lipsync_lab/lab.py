"""What the notebooks call to run things and lay out their results, so that they hold no logic of their own.

Every path here is the project's: a relative output folder is resolved against the project root (never the
working directory — a notebook's kernel runs in notebooks/), and the default is a fresh folder under `results/`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pandas as pd

from lipsync_lab.paths import PROJECT_ROOT, RESULTS_DIR
from lipsync_lab.results import format_summary, run_index


def project_path(path: str | os.PathLike) -> Path:
    """`path` as an absolute path, a relative one taken from the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def output_dir(name: str, out: str | os.PathLike | None = None, kind: str = "notebooks") -> Path:
    """The folder a notebook writes into (created): `out` (relative = the project's) or, by default,
    results/<kind>/<timestamp>_<name>."""
    folder = project_path(out) if out else RESULTS_DIR / kind / f"{dt.datetime.now():%Y-%m-%d_%H-%M-%S}_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_sweep(overrides: list[str], sweep_dir: str | os.PathLike, timeout: float | None = None,
              echo: bool = True) -> Path:
    """`python -m lipsync_lab -m <overrides> hydra.sweep.dir=<sweep_dir>` in a subprocess from the project root,
    so it runs exactly as on the command line (Hydra owns a multirun's process: its launcher, its callbacks — the
    landmark cache before, the comparison table after). Its output goes to `sweep.log` in the sweep folder and, with
    `echo`, is printed as it comes (a long sweep shows its progress); a failing command raises with the end of the
    log. Returns the sweep folder."""
    sweep_dir = project_path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # quoted, so that a path with Hydra's own syntax characters in it stays one value
    cmd = [sys.executable, "-m", "lipsync_lab", "-m", *overrides, f"hydra.sweep.dir='{sweep_dir}'"]
    log = sweep_dir / "sweep.log"
    with open(log, "w") as f, subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True,
                                               env=dict(os.environ, PYTHONUNBUFFERED="1")) as proc:
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                f.write(line)
                if echo:
                    print(line, end="", flush=True)
        finally:
            if timer:
                timer.cancel()
        code = proc.wait()
    if code == 1 and (sweep_dir / "comparison.md").is_file():
        # the sweep ran to its end but a job did not finish: its comparison lists that job with its error
        print(f"warning: a job of the sweep did not finish (exit 1); see {sweep_dir / 'comparison.md'}")
    elif code:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"the sweep failed (exit {code}): {' '.join(cmd[1:])}\n{tail}")
    return sweep_dir


def with_quality(overrides: list[str], syncnet: str | os.PathLike | None = None) -> list[str]:
    """`overrides` plus what scores each run's output with SyncNet (quality=syncnet on an mp4 output; the official
    weights when `syncnet` names them, else random ones that the tables label): any sink=… in them is replaced."""
    out = [o for o in overrides if not o.startswith(("sink=", "quality="))]
    out += ["quality=syncnet", "sink=mp4"]
    if syncnet:
        out.append(f"quality.syncnet={project_path(syncnet)}")
    return out


def variant_titles(names, sep: str = "-") -> tuple[str, dict[str, str]]:
    """What a set of variant names share (their leading `sep`-separated tokens) and, per name, the rest — what
    distinguishes it ("(the shared settings)" for the one that adds nothing): short labels for tables and plots."""
    names = list(dict.fromkeys(names))
    split = [n.split(sep) for n in names]
    common = []
    if len(names) > 1:
        for tokens in zip(*split):
            if len(set(tokens)) > 1:
                break
            common.append(tokens[0])
    titles = {n: sep.join(t[len(common):]) or "(the shared settings)" for n, t in zip(names, split)}
    return sep.join(common), titles


def side_by_side(blocks: dict[str, str], gap: int = 4, width: int | None = None) -> str:
    """Text blocks in columns, each under its title; lines wider than `width` (default: the block's widest line
    that is not a sentence — its table) are wrapped, so a long closing sentence does not widen its column."""
    columns = []
    for title, text in blocks.items():
        lines = text.splitlines()
        w = width or max((len(line) for line in lines if "  " in line), default=max(map(len, lines), default=0))
        wrapped = [title[:w], "=" * min(len(title), w)]
        for line in lines:
            wrapped += textwrap.wrap(line, w) if len(line) > w else [line]
        columns.append((w, wrapped))
    height = max(len(lines) for _, lines in columns)
    rows = []
    for i in range(height):
        cells = [(lines[i] if i < len(lines) else "").ljust(w) for w, lines in columns]
        rows.append((" " * gap).join(cells).rstrip())
    return "\n".join(rows)


def seed_tables(paths) -> str:
    """The seed-format summary table (`results.format_summary`) of every finished run under `paths`, side by side,
    each titled by what distinguishes its variant (what all share is said once, above); failed runs say why."""
    index = run_index(paths)
    if index.empty:
        return f"no runs under {paths}"
    variants = [v or Path(d).name for v, d in zip(index["variant"], index["run_dir"])]
    common, titles = variant_titles(variants)
    blocks = {}
    for row, variant in zip(index.itertuples(), variants):
        title = titles[variant]
        if row.status != "ok":
            blocks[title] = f"{row.status}: {row.error or 'no summary'}"
            continue
        record = json.loads((Path(row.run_dir) / "summary.json").read_text())
        blocks[title] = format_summary(record["summary"])
    head = f"All runs: {common}\n\n" if common else ""
    return head + side_by_side(blocks)


# the stream's figures in a run's summary (results.stream_summary, under `stream`), and the throughput of its batches
STREAM_KEYS = ["stream.paced", "stream.first_frame_latency_s", "stream.latency_p50_s", "stream.latency_p90_s",
               "stream.latency_p99_s", "stream.sustained_fps", "stream.rtf", "fps"]


def _lookup(record: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(record, dict) or part not in record:
            return None
        record = record[part]
    return record


def summaries(runs: dict[str, str | os.PathLike], keys: list[str] | None = None) -> pd.DataFrame:
    """One row per labelled run folder: its status and the `keys` of its summary.json (dotted for nested ones:
    "stream.latency_p50_s"; the column is named by the last part), missing ones None, so runs of other versions
    still line up. All top-level keys when `keys` is None."""
    rows = {}
    for label, run_dir in runs.items():
        path = Path(run_dir) / "summary.json"
        record = json.loads(path.read_text()) if path.is_file() else {"status": "incomplete"}
        summary = record.get("summary", {})
        values = {k.rsplit(".", 1)[-1]: _lookup(summary, k) for k in keys} if keys else dict(summary)
        rows[label] = {"status": record.get("status", "ok"), **values}
    return pd.DataFrame.from_dict(rows, orient="index")
