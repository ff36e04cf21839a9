"""Compare runs: per-stage medians, speed-ups against a baseline, and the drift of the generated output.

    python -m lipsync_lab.compare <sweep or run folders…> [--baseline TEXT] [--out DIR]

One row per run folder (sweep jobs in job order; failed runs listed with their error). The baseline is the first
run (a sweep's job 0) unless `--baseline` names a substring of another's folder or variant. Speed-ups are the
baseline's median over the run's median (> 1 = faster), measured in the same sweep. Drift compares the generated
face crops (`crops.npz`, lossless) frame by frame over the mouth region the model regenerates: mean and max
|difference| in grey levels and PSNR (inf = identical); 0 / inf for the baseline against itself.

Drift over weight seeds: runs whose settings differ only in `seed` are one variant. Each run is compared with the
baseline variant's run of the same seed, and the table shows each variant's median and worst over its seeds. On
random weights (no model.checkpoint) a drift figure depends on the weights drawn, so it is shown only over at least
5 seeds (`-m seed=0,1,2,3,4 <variants…>`); with fewer the cell says so (the csv keeps each run's figure).

Quality (`summary.quality`, written by quality=syncnet or `python -m lipsync_lab.quality`): SyncNet's LSE-C,
LSE-D and AV offset — marked "(random weights)" where SyncNet had no official weights: they judge nothing — and the
self-reconstruction PSNR / SSIM of clips driven by their own audio.

The table is printed and written beside the runs as comparison.csv and comparison.md. A multirun prints it at its
end (the `sweep.CompareAfterSweep` Hydra callback).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lipsync_lab.results import collect_runs, run_index
from lipsync_lab.timing import COMPARED

log = logging.getLogger(__name__)

STAGE_COLUMNS = COMPARED  # read face audio diffusion (denoise decode) restore write: timing.STAGES' order
TFLOPS_COLUMNS = ["denoise", "decode"]  # stages whose achieved TFLOP/s the table shows
UNET_COLUMNS = {"unet_frames": "UNet frames", "unet_frames_shallow": "of which shallow"}  # per batch, median
MEMORY_COLUMNS = {"model_mb": "model MB", "inference_mb": "inference MB", "vram_peak_mb": "VRAM peak MB",
                  "rss_peak_mb": "RSS peak MB"}
QUALITY_COLUMNS = {"lse_c": "LSE-C", "lse_d": "LSE-D", "av_offset": "AV offset", "recon_psnr_db": "recon PSNR dB",
                   "recon_ssim": "recon SSIM"}
MIN_SEEDS = 5  # weight seeds a drift figure on random weights needs before the table shows it (issue #15)


def random_weights(config: dict) -> bool:
    """Whether a run's model had seeded random weights (no UNet checkpoint); diffusion=passthrough has no model."""
    if "passthrough" in str((config.get("diffusion") or {}).get("_target_", "")):
        return False
    return not (config.get("model") or {}).get("checkpoint")


def seedless(config: dict) -> str:
    """A run's settings without its seed(s): runs that share it are one variant over several weight seeds."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("seed", "variant")}
        return node
    return json.dumps(strip(config), sort_keys=True, default=str)


def quality_cells(summary: dict) -> dict:
    """The comparison's quality columns from a run's summary (absent: None)."""
    quality = summary.get("quality") or {}
    sync, recon = quality.get("syncnet") or {}, quality.get("reconstruction") or {}
    return dict(lse_c=sync.get("lse_c"), lse_d=sync.get("lse_d"), av_offset=sync.get("av_offset"),
                sync_random_weights=sync.get("random_weights"), recon_random_weights=recon.get("random_weights"),
                recon_psnr_db=recon.get("psnr_db"),
                recon_ssim=recon.get("ssim"), recon_mean_abs=recon.get("mean_abs"))


def load_crops(run_dir: str | os.PathLike) -> dict | None:
    path = Path(run_dir) / "crops.npz"
    if not path.is_file():
        return None
    with np.load(path) as f:  # `originals` (the aligned input crops) only where a run kept them
        return {k: f[k] for k in ("frames", "crops", "regenerated", "originals") if k in f}


def drift(run: dict | None, base: dict | None) -> dict:
    """Mean / max |Δ| (grey levels) and PSNR (dB) between two runs' crops over their common frames, inside the
    regenerated (mouth) region — the rest of a crop is the input's by construction."""
    empty = dict(drift_frames=0, drift_mean_abs=math.nan, drift_max_abs=math.nan, psnr_db=math.nan)
    if run is None or base is None or run["crops"].shape[1:] != base["crops"].shape[1:]:
        return empty
    common, ia, ib = np.intersect1d(run["frames"], base["frames"], return_indices=True)
    if not len(common):
        return empty
    region = base["regenerated"].astype(bool)
    a = run["crops"][ia][:, region].astype(np.float64)
    b = base["crops"][ib][:, region].astype(np.float64)
    diff = np.abs(a - b)
    mse = float(np.mean(diff ** 2))
    return dict(drift_frames=int(len(common)), drift_mean_abs=float(diff.mean()), drift_max_abs=float(diff.max()),
                psnr_db=math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse))


def compare(paths, baseline: str | None = None) -> pd.DataFrame:
    """The comparison table of the run folders under `paths` (see the module's docstring)."""
    index = run_index(paths)
    if index.empty:
        raise SystemExit(f"no run folders under {paths}")
    ok = index[index["status"] == "ok"]
    timings = collect_runs(list(ok["run_dir"])) if len(ok) else pd.DataFrame()
    steady = timings[~timings["warmup"]] if len(timings) else timings
    rows = []
    for run in index.itertuples():
        row = dict(run=os.path.basename(run.run_dir), variant=run.variant, status=run.status, error=run.error,
                   run_dir=run.run_dir)
        if run.status == "ok":
            record = json.loads((Path(run.run_dir) / "summary.json").read_text())
            summary = record["summary"]
            mine = steady[steady["run_dir"] == run.run_dir]
            if mine.empty:  # every batch was warm-up: the summary says so; use them all
                mine = timings[timings["run_dir"] == run.run_dir]
            medians = mine.groupby("stage")["seconds"].median()
            row.update({k: float(medians.get(k, math.nan)) for k in STAGE_COLUMNS})
            # achieved TFLOP/s of the two heaviest model stages (lipsync_lab/flops.py; absent in older runs)
            row.update({f"{k}_tflops": summary["stages"].get(k, {}).get("tflops") for k in TFLOPS_COLUMNS})
            stream = summary.get("stream") or {}  # measured on the stream (absent in older runs)
            row.update(stream_fps=stream.get("sustained_fps"), first_frame_s=stream.get("first_frame_latency_s"))
            memory = summary.get("memory") or {}  # absent in older runs
            row.update(model_mb=memory.get("model_mb"), inference_mb=memory.get("inference_mb"),
                       vram_peak_mb=memory.get("stream_peak_allocated_mb"), rss_peak_mb=memory.get("rss_peak_mb"))
            # what a batch cost the UNet (guidance branches × frames; shallow DeepCache steps apart), absent in
            # older runs and for diffusion=passthrough
            row.update(unet_frames=summary.get("unet_frames_per_batch"),
                       unet_frames_shallow=summary.get("unet_frames_shallow_per_batch"))
            config = record["meta"].get("config") or {}
            row.update(seed=config.get("seed"), group=seedless(config), random_weights=random_weights(config),
                       **quality_cells(summary))
            row.update(total=summary["batch_total_median"], fps=summary["fps"], frames=summary["steady_frames"],
                       compile_s=summary.get("compile_s"),
                       graphs_after_warmup=summary.get("graphs_compiled_after_warmup"),
                       device=record["meta"].get("device"))
        rows.append(row)
    table = pd.DataFrame(rows)
    done = table[table["status"] == "ok"]
    if done.empty:
        return table
    if baseline:
        hits = done[done["run"].str.contains(baseline, regex=False)
                    | done["variant"].fillna("").str.contains(baseline, regex=False)]
        if hits.empty:
            raise SystemExit(f"--baseline {baseline!r} matches no run: {', '.join(done['run'])}")
        base = hits.iloc[0]
    else:
        base = done.iloc[0]
    table["baseline"] = table["run_dir"] == base["run_dir"]
    table["speedup"] = base["total"] / table["total"]
    table["diffusion_speedup"] = base["diffusion"] / table["diffusion"]
    # each run against the baseline variant's run of its own seed (its inputs and weights are that seed's)
    partner = {r.seed: r.run_dir for r in done.itertuples() if r.group == base["group"]}
    crops = {d: load_crops(d) for d in set(partner.values())}
    drifts = [drift(load_crops(r.run_dir), crops[partner[r.seed]])
              if r.status == "ok" and r.seed in partner else drift(None, None) for r in table.itertuples()]
    table = pd.concat([table, pd.DataFrame(drifts, index=table.index)], axis=1)
    return _over_seeds(table)


def _over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Each variant's drift over its weight seeds: drift_seeds, drift_median, drift_worst (of the mean |Δ|),
    drift_max_worst (of the max |Δ|), psnr_median — on every row of the variant."""
    out = table.assign(drift_seeds=0, drift_median=math.nan, drift_worst=math.nan, drift_max_worst=math.nan,
                       psnr_median=math.nan)
    done = out[(out["status"] == "ok") & out["drift_mean_abs"].notna()]
    for _, rows in done.groupby("group"):
        out.loc[rows.index, "drift_seeds"] = rows["seed"].nunique()
        out.loc[rows.index, "drift_median"] = rows["drift_mean_abs"].median()
        out.loc[rows.index, "drift_worst"] = rows["drift_mean_abs"].max()
        out.loc[rows.index, "drift_max_worst"] = rows["drift_max_abs"].max()
        out.loc[rows.index, "psnr_median"] = rows["psnr_db"].median()
    return out


def _num(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, fmt)


def _md_cell(value: object) -> str:
    """One Markdown table cell: a bare `|` would end the cell early (headers like `mean |Δ|`, error texts), a line
    break would end the row, so pipes are escaped and line breaks folded into spaces."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def format_table(table: pd.DataFrame) -> str:
    """Markdown: one row per run, stage medians in ms, ratios and drift against the baseline (marked *)."""
    stages = [k for k in STAGE_COLUMNS if k in table and table[k].notna().any()]
    tflops = [k for k in TFLOPS_COLUMNS if f"{k}_tflops" in table and table[f"{k}_tflops"].notna().any()]
    # the stream's own figures: under executor=pipelined stages overlap, and only these say how fast it went
    stream = [k for k in ("stream_fps", "first_frame_s") if k in table and table[k].notna().any()]
    # memory: the device's (CUDA: the models' and what inference adds) where measured; the process's peak RSS always
    memory = [k for k in MEMORY_COLUMNS if k in table and table[k].notna().any()]
    unet = [k for k in UNET_COLUMNS if k in table and table[k].notna().any() and (table[k] > 0).any()]
    quality = [k for k in QUALITY_COLUMNS if k in table and table[k].notna().any()]
    head = ["run", *[f"{k} ms" for k in stages], "total ms", "fps", *[UNET_COLUMNS[k] for k in unet],
            *[{"stream_fps": "stream fps", "first_frame_s": "first frame s"}[k] for k in stream],
            *[f"{k} TFLOP/s" for k in tflops], *[MEMORY_COLUMNS[k] for k in memory],
            "speed-up", "diffusion speed-up",
            "compile s", "recompiles", *[QUALITY_COLUMNS[k] for k in quality], "mean |Δ|", "max |Δ|", "PSNR dB"]

    def row(cells: list) -> str:
        return "| " + " | ".join(map(_md_cell, cells)) + " |"

    lines = [row(head), "|" + "---|" * len(head)]
    for r in table.to_dict("records"):
        name = r["run"] + (" *" if r.get("baseline") else "")
        if r["status"] != "ok":
            lines.append(row([name, f"{r['status']}: {r.get('error') or 'no summary'}"] + [""] * (len(head) - 2)))
            continue
        cells = [name, *[_num(1000 * r[k], ".1f") for k in stages], _num(1000 * r["total"], ".1f"),
                 _num(r["fps"], ".2f"), *[_num(r.get(k), ".0f") for k in unet], *[_num(r.get(k), ".2f") for k in stream],
                 *[_num(r.get(f"{k}_tflops"), ".3g") for k in tflops], *[_num(r.get(k), ".0f") for k in memory],
                 _num(r.get("speedup"), ".2f"), _num(r.get("diffusion_speedup"), ".2f"),
                 _num(r.get("compile_s"), ".1f"), _num(r.get("graphs_after_warmup"), ".0f"),
                 *[_quality_cell(r, k) for k in quality], *_drift_cells(r)]
        lines.append(row(cells))
    devices = sorted(set(table["device"].dropna())) if "device" in table else []
    lines.append("")
    seeds = table["drift_seeds"].max() if "drift_seeds" in table and table["drift_seeds"].notna().any() else 0
    over_seeds = "median (worst) over each variant's weight seeds; " if seeds > 1 else ""
    drift_note = (f"drift over the regenerated mouth region of the lossless crops, against the baseline's run of the "
                  f"same seed; {over_seeds}on random weights shown only over ≥ {MIN_SEEDS} seeds")
    if quality:
        drift_note += ("; LSE-C (up) / LSE-D (down) / AV offset: SyncNet on the output (LatentSync's evaluation), "
                       "'(random weights)' = SyncNet without its official weights: checks the code path, judges "
                       "nothing; recon = generated vs original mouth of a clip driven by its own audio, "
                       "'(random weights)' there = a UNet without a checkpoint")
    lines.append(f"Steady-state medians per batch; * = baseline (speed-up = its time / the run's); fps = frames / "
                 f"summed stage times, stream fps = measured output rate (they differ when stages overlap: "
                 f"executor=pipelined); UNet frames = the UNet's frame-evaluations per batch (branches × frames); "
                 f"{drift_note}; memory in MB "
                 f"(model / inference: device memory the models hold / inference adds at its peak; RSS: the "
                 f"process's high-water mark). "
                 f"Device: {'; '.join(devices) or 'unknown'}.")
    return "\n".join(lines)


def _quality_cell(r: dict, key: str) -> str:
    value = r.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    cell = _num(value, {"av_offset": ".0f", "recon_ssim": ".4f", "recon_psnr_db": ".2f"}.get(key, ".3f"))
    if r.get("recon_random_weights" if key.startswith("recon") else "sync_random_weights"):
        cell += " (random weights)"
    return cell


def _drift_cells(r: dict) -> list[str]:
    """mean |Δ|, max |Δ|, PSNR cells: the baseline's 0 / 0 / inf by construction; a variant's figure, or over
    several seeds its median (worst) — and on random weights nothing under MIN_SEEDS seeds, said in the cell."""
    if r.get("baseline"):
        return _single(r)
    seeds = int(r.get("drift_seeds") or 0)
    if seeds and r.get("random_weights") and seeds < MIN_SEEDS:
        return [f"n/a: {seeds} seed{'s' if seeds > 1 else ''} of random weights (needs {MIN_SEEDS})", "", ""]
    if seeds > 1:
        return [f"{_num(r['drift_median'], '.3f')} ({_num(r['drift_worst'], '.3f')}), {seeds} seeds",
                _num(r.get("drift_max_worst"), ".0f"), _num(r.get("psnr_median"), ".1f")]
    return _single(r)


def _single(r: dict) -> list[str]:
    return [_num(r.get("drift_mean_abs"), ".3f"), _num(r.get("drift_max_abs"), ".0f"), _num(r.get("psnr_db"), ".1f")]


def write_comparison(table: pd.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """comparison.csv and comparison.md, and contact_sheet.png where the runs kept crops: the same frames' mouths
    for the baseline and each variant with their |Δ| maps (plots.contact_sheet) — a drift figure is looked at before
    it is trusted."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / "comparison.csv", out_dir / "comparison.md"
    table.to_csv(csv, index=False)
    md.write_text(format_table(table) + "\n")
    write_contact_sheet(table, out_dir)
    return csv, md


def write_contact_sheet(table: pd.DataFrame, out_dir: str | os.PathLike, frames: int = 4) -> Path | None:
    """contact_sheet.png beside the table, or None (said in the log) when fewer than two finished runs kept crops
    of common frames."""
    if "baseline" not in table:
        return None
    done = table[table["status"] == "ok"]
    crops = {r.run: load_crops(r.run_dir) for r in done.itertuples()}
    base = done.loc[done["baseline"], "run"]
    if base.empty or sum(c is not None for c in crops.values()) < 2:
        return None
    import matplotlib.pyplot as plt

    from lipsync_lab.plots import contact_sheet

    try:
        fig = contact_sheet(crops, base.iloc[0], frames)
    except ValueError as e:  # no crops in common: the table still stands
        log.warning("no contact sheet: %s", e)
        return None
    path = Path(out_dir) / "contact_sheet.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lipsync_lab.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="sweep or run folders (globs allowed)")
    parser.add_argument("--baseline", help="a substring of the baseline run's folder name or variant "
                                           "(default: the first run)")
    parser.add_argument("--out", help="where comparison.csv/.md go (default: the common folder of the paths)")
    args = parser.parse_args(argv)
    table = compare(args.paths, args.baseline)
    out = args.out or os.path.commonpath([os.path.abspath(p) for p in args.paths])
    if os.path.isfile(out):
        out = os.path.dirname(out)
    csv, md = write_comparison(table, out)
    print(format_table(table))
    print(f"Comparison: {md} and {csv.name}")


if __name__ == "__main__":
    main(sys.argv[1:])
