"""Sweeps end with a comparison table: one row per job, ratios against the baseline job, drift of the generated
crops; failed runs are listed, not skipped."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from lipsync_lab.compare import compare, format_table
from lipsync_lab.results import collect_runs, run_index, write_failed
from test_run import cli

FAST = ["max_frames=8", "batch_frames=4", "steps=1", "sink=none", "print_batches=false"]


def test_two_group_multirun_writes_one_folder_per_combination_and_a_comparison(tmp_path):
    r = cli("-m", "scheduler=dpmpp,ddim", "norm=latentsync,diffusers", *FAST, f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    runs = run_index(tmp_path)
    assert len(runs) == 4 and (runs["status"] == "ok").all()
    assert runs["variant"].nunique() == 4  # the variant names tell the four combinations apart
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert len(table) == 4 and table["run"].str.startswith(("0_", "1_", "2_", "3_")).all()
    base = table[table["baseline"]]
    assert base["run"].tolist() == [runs["run_dir"].map(lambda p: p.rsplit("/", 1)[-1]).iloc[0]]
    assert base["speedup"].iloc[0] == 1.0 and base["drift_mean_abs"].iloc[0] == 0.0
    assert math.isinf(base["psnr_db"].iloc[0])
    others = table[~table["baseline"]]
    assert (others["speedup"] > 0).all() and others["speedup"].map(math.isfinite).all()
    # another scheduler or norm paints other mouths: drift is measured, not assumed
    assert (others["drift_mean_abs"] > 0).all() and (others["drift_frames"] == 8).all()
    # the ratios are the medians' ratios
    row = others.iloc[0]
    assert abs(row["speedup"] - base["total"].iloc[0] / row["total"]) < 1e-9
    assert "| run |" in r.stdout and "comparison.md" in r.stdout  # printed at the end of the sweep
    assert (tmp_path / "comparison.md").read_text().startswith("| run |")
    # what a batch cost the UNet: 1 step × 2 CFG branches × 4 frames, every job
    assert (table["unet_frames"] == 8).all() and "| UNet frames |" in (tmp_path / "comparison.md").read_text()
    # the mouths themselves, baseline and variants, with their |Δ| maps
    assert (tmp_path / "contact_sheet.png").stat().st_size > 10_000


def test_the_contact_sheet_shows_the_same_frames_and_their_differences():
    from lipsync_lab.plots import contact_sheet, mouth_panels

    res = 32
    region = np.zeros((res, res), np.uint8)
    region[20:28, 8:24] = 1  # the regenerated mouth
    rng = np.random.default_rng(0)
    base_crops = rng.integers(0, 200, (5, res, res, 3), dtype=np.uint8)
    other = base_crops.copy()
    other[:, 20:28, 8:24] += 10  # the variant paints the mouth 10 grey levels brighter
    runs = {"base": dict(frames=np.arange(5), crops=base_crops, regenerated=region),
            "variant": dict(frames=np.arange(1, 6), crops=np.concatenate([other[1:], other[:1]]),
                            regenerated=region),
            "no crops": None}
    panels = mouth_panels(runs, "base", frames=3, margin=2)
    assert panels["frames"] == [1, 3, 4] and panels["names"] == ["base", "variant"]  # common frames, spread
    assert panels["box"] == (18, 30, 6, 26)
    assert panels["mouths"]["base"].shape == (3, 12, 20, 3)
    diff = panels["diffs"]["variant"]
    assert diff[:, 2:10, 2:18].min() == diff.max() == 10 and diff[:, :2].max() == 0  # inside the mouth only
    fig = contact_sheet(runs, "base", frames=3)
    assert len(fig.axes) == 2 * 2 * 3 + 1  # 2 runs × 3 frames × (mouth, |Δ|) + the colour bar
    with pytest.raises(ValueError, match="no crops"):
        mouth_panels(runs, "no crops")


def test_a_failed_run_is_listed_not_skipped(tmp_path):
    ok = tmp_path / "0_ok"
    r = cli(*FAST, f"hydra.run.dir={ok}")
    assert r.returncode == 0, r.stderr[-2000:]
    bad = tmp_path / "1_bad"
    # a file that exists (the command-line check passes it) but is no video: the run itself fails on it
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(np.random.default_rng(0).bytes(4096))
    r = cli("source=file", f"source.video={clip}", f"hydra.run.dir={bad}")
    assert r.returncode == 2
    runs = run_index(tmp_path).set_index("status")
    assert set(runs.index) == {"ok", "failed"}
    assert str(clip) in runs.loc["failed", "error"]
    table = compare(tmp_path)
    assert table["status"].tolist() == ["ok", "failed"]
    assert f"failed: LipsyncInputError: {clip}: cannot read as media" in format_table(table)
    assert_markdown_table(format_table(table), rows=2)
    # the collector warns about it instead of dropping it silently
    with pytest.warns(UserWarning, match="1_bad: failed run"):
        assert collect_runs(tmp_path)["run_dir"].nunique() == 1
    incomplete = tmp_path / "2_incomplete" / ".hydra"
    incomplete.mkdir(parents=True)
    assert run_index(tmp_path)["status"].tolist() == ["ok", "failed", "incomplete"]
    write_failed(tmp_path / "3_crash", RuntimeError("boom"), {})
    assert run_index(tmp_path)["error"].iloc[-1] == "RuntimeError: boom"


# -- the Markdown renders as a table (issue #14: `mean |Δ|` split its header into extra cells) ----------------------
def md_cells(line: str) -> list[str]:
    """A GitHub-flavoured Markdown table row's cells: split on pipes that no backslash escapes, outer pipes dropped."""
    assert line.startswith("| ") and line.endswith(" |"), line
    return [c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])]


def assert_markdown_table(md: str, rows: int) -> list[list[str]]:
    """Every row of the table at the top of `md` has the header's number of cells; returns header + body rows."""
    lines = md.split("\n")
    table = lines[:lines.index("")]
    head, rule, *body = table
    width = len(md_cells(head))
    assert rule == "|" + "---|" * width
    assert len(body) == rows, table
    for line in [head, *body]:
        assert len(md_cells(line)) == width, line
    return [md_cells(line) for line in [head, *body]]


def test_pipes_in_headers_and_cells_are_escaped():
    ok = dict(run="0_a|b", variant="v", status="ok", error=None, run_dir="/r/0", baseline=True, total=0.5, fps=16.0,
              read=0.001, diffusion=0.4, speedup=1.0, diffusion_speedup=1.0, drift_mean_abs=0.0, drift_max_abs=0.0,
              psnr_db=math.inf, device="cpu")
    failed = dict(run="1_b", variant="w", status="failed", run_dir="/r/1", baseline=False,
                  error="LipsyncInputError: /x|y.mp4: bad | worse\nsecond line")
    md = format_table(pd.DataFrame([ok, failed]))
    head, first, second = assert_markdown_table(md, rows=2)
    assert head[-3:] == [r"mean \|Δ\|", r"max \|Δ\|", "PSNR dB"]
    assert first[0] == r"0_a\|b *" and first[head.index("total ms")] == "500.0"
    assert second[1] == r"failed: LipsyncInputError: /x\|y.mp4: bad \| worse second line"
    assert set(second[2:]) == {""}


# -- drift over weight seeds, and the quality columns ----------------------------------------------------------------
def _fake_run(folder, variant: str, seed: int, crops: np.ndarray, checkpoint=None, quality=None):
    """A finished run folder with what compare reads: summary.json, timings.parquet, crops.npz."""
    import json

    import pyarrow.parquet as pq

    from lipsync_lab.recording import timings_table

    folder.mkdir(parents=True)
    config = dict(seed=seed, variant=f"{variant}_seed={seed}", scheduler=variant,
                  model=dict(checkpoint=checkpoint), diffusion=dict(_target_="lipsync_lab.diffusion.LipsyncDiffusion"),
                  source=dict(seed=seed))
    summary = dict(batch_total_median=1.0, fps=8.0, steady_frames=8, stages={}, quality=quality or {})
    (folder / "summary.json").write_text(json.dumps(dict(status="ok", meta=dict(variant=config["variant"],
                                                                              config=config, device="cpu"),
                                                         summary=summary)))
    rows = [dict(run_id=variant, batch=0, warmup=False, stage=k, seconds=0.5) for k in ("diffusion", "restore")]
    pq.write_table(timings_table(rows), folder / "timings.parquet")
    region = np.zeros(crops.shape[1:3], np.uint8)
    region[4:, :] = 1
    np.savez_compressed(folder / "crops.npz", frames=np.arange(len(crops)), crops=crops, regenerated=region)


def test_drift_is_paired_by_seed_and_shown_over_five_seeds_only(tmp_path):
    rng = np.random.default_rng(0)
    shifts = [1, 2, 3, 4, 10]  # variant b paints the mouth brighter by this much at seed s
    job = 0
    for seed, shift in enumerate(shifts):
        base = rng.integers(0, 200, (3, 8, 8, 3), dtype=np.uint8)  # each seed its own inputs and weights
        other = base.copy()
        other[:, 4:] += shift
        _fake_run(tmp_path / "five" / f"{job}_a", "a", seed, base)
        _fake_run(tmp_path / "five" / f"{job + 1}_b", "b", seed, other)
        job += 2
    table = compare(tmp_path / "five")
    b = table[table["variant"].str.startswith("b")]
    assert b["drift_mean_abs"].tolist() == shifts  # each seed against the baseline's own seed, not seed 0's
    assert (b["drift_seeds"] == 5).all() and (b["drift_median"] == 3).all() and (b["drift_worst"] == 10).all()
    head, *rows = assert_markdown_table(format_table(table), rows=10)
    assert rows[1][head.index(r"mean \|Δ\|")] == "3.000 (10.000), 5 seeds"

    # one seed of random weights: no figure in the table (the csv keeps it), said in the cell
    _fake_run(tmp_path / "one" / "0_a", "a", 0, base)
    _fake_run(tmp_path / "one" / "1_b", "b", 0, other)
    table = compare(tmp_path / "one")
    head, _, row = assert_markdown_table(format_table(table), rows=2)
    assert row[head.index(r"mean \|Δ\|")] == "n/a: 1 seed of random weights (needs 5)"
    assert table["drift_mean_abs"].tolist() == [0, 10]
    # trained weights: one seed is a figure
    _fake_run(tmp_path / "trained" / "0_a", "a", 0, base, checkpoint="unet.pt")
    _fake_run(tmp_path / "trained" / "1_b", "b", 0, other, checkpoint="unet.pt")
    head, _, row = assert_markdown_table(format_table(compare(tmp_path / "trained")), rows=2)
    assert row[head.index(r"mean \|Δ\|")] == "10.000"


def test_quality_columns_label_random_syncnet_weights(tmp_path):
    crops = np.zeros((2, 8, 8, 3), np.uint8)
    sync = dict(lse_c=2.5, lse_d=9.0, av_offset=1, random_weights=True)
    _fake_run(tmp_path / "0_a", "a", 0, crops, quality=dict(syncnet=sync, reconstruction=dict(
        psnr_db=30.0, ssim=0.9, mean_abs=2.0, random_weights=False)))
    _fake_run(tmp_path / "1_b", "b", 0, crops, quality=dict(syncnet={**sync, "random_weights": False},
                                                            reconstruction=dict(psnr_db=25.0, random_weights=True)))
    table = compare(tmp_path)
    md = format_table(table)
    head, a, b = assert_markdown_table(md, rows=2)
    assert a[head.index("LSE-C")] == "2.500 (random weights)" and a[head.index("AV offset")] == "1 (random weights)"
    assert b[head.index("LSE-C")] == "2.500" and b[head.index("LSE-D")] == "9.000"
    assert a[head.index("recon PSNR dB")] == "30.00" and b[head.index("recon SSIM")] == "–"
    assert b[head.index("recon PSNR dB")] == "25.00 (random weights)"
    assert "judges nothing" in md
