"""lipsync_lab.lab (what the notebooks call) and the notebooks' plots in lipsync_lab.plots, on hand-made data."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lipsync_lab import lab, plots  # noqa: E402
from lipsync_lab.paths import PROJECT_ROOT, RESULTS_DIR  # noqa: E402


def test_paths_are_the_projects_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RESULTS_DIR == PROJECT_ROOT / "results"
    assert lab.project_path("results/x") == PROJECT_ROOT / "results" / "x"
    assert lab.project_path(tmp_path / "y") == tmp_path / "y"
    assert lab.output_dir("n", tmp_path / "out") == tmp_path / "out" and (tmp_path / "out").is_dir()


def test_side_by_side_titles_columns_and_wraps_long_sentences():
    text = lab.side_by_side({"a": "x  1\nx  2\na long closing sentence here", "bb": "y  3"}, gap=2)
    lines = text.splitlines()
    assert lines[0].split() == ["a", "bb"] and lines[2] == "x  1  y  3"
    assert all(len(line) <= 4 + 2 + 4 for line in lines)  # the sentence wrapped to its column's table width
    common, titles = lab.variant_titles(["tiny-kl-b8", "tiny-kl-b8-compile=unet", "tiny-kl-b8"])
    assert common == "tiny-kl-b8" and titles == {"tiny-kl-b8": "(the shared settings)",
                                                 "tiny-kl-b8-compile=unet": "compile=unet"}
    assert lab.variant_titles(["tiny-kl"]) == ("", {"tiny-kl": "tiny-kl"})


def _run(folder, variant, summary=None, status="ok"):
    folder.mkdir(parents=True)
    record = dict(status=status, meta=dict(variant=variant), summary=summary or {})
    if status != "ok":
        record["error"] = "ValueError: boom"
    (folder / "summary.json").write_text(json.dumps(record))


def test_seed_tables_and_summaries(tmp_path):
    from lipsync_lab.results import summarize, timings_frame

    rows = [dict(run_id="r", batch=b, stage="diffusion", label="Diffusion inference", parent=None, step=-1,
                 timestep=-1, seconds=0.5 + b, start_s=0.0, frames=4, face_frames=4, landmarks_cached=0,
                 warmup=b == 0) for b in range(3)]
    summary = summarize(timings_frame(rows))
    _run(tmp_path / "0_a", "tiny-kl-s3", summary)
    _run(tmp_path / "1_b", "tiny-kl-s3-compile=unet", summary)
    _run(tmp_path / "2_c", "tiny-kl-s3-compile=unet_vae", status="failed")
    text = lab.seed_tables(tmp_path)
    assert text.startswith("All runs: tiny-kl-s3")
    assert "(the shared settings)" in text and "compile=unet " in text and "failed: ValueError: boom" in text
    assert text.count("Diffusion inference") == 2

    summary["stream"] = {"latency_p50_s": 0.5}
    (tmp_path / "0_a" / "summary.json").write_text(json.dumps(dict(status="ok", meta={}, summary=summary)))
    table = lab.summaries({"a": tmp_path / "0_a", "c": tmp_path / "2_c", "gone": tmp_path / "nope"},
                          ["fps", "stream.latency_p50_s", "not_a_key"])
    assert list(table.columns) == ["status", "fps", "latency_p50_s", "not_a_key"]
    assert list(table["status"]) == ["ok", "failed", "incomplete"]
    assert table.loc["a", "fps"] == pytest.approx(summary["fps"]) and table.loc["a", "latency_p50_s"] == 0.5
    assert table["not_a_key"].isna().all()


def test_run_sweep_echoes_its_output_and_raises_with_the_end_of_its_log(tmp_path, capsys):
    with pytest.raises(RuntimeError, match="the sweep failed") as error:
        lab.run_sweep(["no_such_group=1"], tmp_path / "sweep", timeout=120)
    log = (tmp_path / "sweep" / "sweep.log").read_text()
    assert "no_such_group" in log and "no_such_group" in capsys.readouterr().out and log[-200:] in str(error.value)


def stream_df(n=5, paced=True):
    """A stream of n batches of 4 frames that falls slowly behind a 25-fps input (hand-made)."""
    b = np.arange(n)
    arrived = (4 * b + 4 + 3) / 25
    started = np.maximum(arrived, 0.2 + 0.2 * b)
    return pd.DataFrame(dict(run_id="r", batch=b, first_frame=4 * b, frames=4, warmup=b == 0, paced=paced,
                             arrived_s=arrived, waited_s=0.0, started_s=started, finished_s=started + 0.18,
                             written_s=started + 0.19, skipped=["", "", "no_face", "", ""][:n], rss_mb=500.0))


def test_save_figure_takes_a_figure_an_axes_or_axes(tmp_path):
    fig, axes = plt.subplots(1, 2)
    for what, name in ((fig, "f"), (axes[0], "a"), (axes, "arr")):
        path = plots.save_figure(what, tmp_path / "sub", name)
        assert path == tmp_path / "sub" / f"{name}.png" and path.stat().st_size > 1000
    plt.close(fig)


def test_stream_plots(tmp_path):
    from lipsync_lab.results import frame_latencies

    streams = {"sequential": stream_df(), "pipelined": stream_df(4)}
    fig = plots.latency_timelines(streams)
    assert len(fig.axes) == 2 and fig.axes[0].get_legend() is not None and fig.axes[1].get_legend() is None
    assert plots.save_figure(fig, tmp_path, "timeline").is_file()
    ax = plots.frame_latency_plot({k: frame_latencies(s) for k, s in streams.items()})
    assert len(ax.get_lines()) >= 2
    plt.close("all")


def test_bench_and_trace_plots(tmp_path):
    timings = pd.DataFrame(dict(device="cpu", short_side=[360] * 4, size="360×640", stage=["align"] * 2
                                + ["restore"] * 2, method=["cv2", "kornia roi"] * 2, faces=2,
                                ms_per_frame=[1.0, 2.0, 3.0, 4.0], x_cv2=[1, 0.5, 1, 0.75]))
    assert len(plots.method_bars(timings).axes) == 2
    image = np.zeros((8, 8, 3), np.uint8)
    diffs = dict(crop_cv2=image, crop_kornia=image, crop_diff=np.ones((8, 8)), frame_cv2=image,
                 frame_kornia=image, frame_diff=np.ones((8, 8)), size="8×8", crop_mean_abs=1.0, crop_max_abs=1.0,
                 roi_mean_abs=1.0, roi_max_abs=1.0, outside_max_abs=0)
    assert plots.save_figure(plots.difference_maps(diffs), tmp_path, "diff").is_file()
    table = pd.DataFrame(dict(front_end=["whisper", "whisper_window"], ms_per_frame=[30.0, 2.0]))
    cosine = pd.DataFrame(dict(whisper=[1.0, 1.0], whisper_window=[0.98, 0.97]))
    assert len(plots.audio_front_end_plot(table, cosine).axes) == 2
    top = pd.DataFrame(dict(name=["aten::mm", "aten::add"], calls=[3, 2], self_ms=[0.05, 0.004],
                            total_ms=[0.05, 0.004], self_share=[0.9, 0.1]))
    shares = pd.DataFrame(dict(stage=["face", "diffusion", "denoise"], label=["Facial preprocessing",
                               "Diffusion inference", "Denoising process"], parent=[None, None, "diffusion"],
                               calls=1, ms=[2.0, 8.0, 6.0], share=[0.2, 0.8, 0.75]))
    fig = plots.trace_plot(top, shares)
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["stages", "within diffusion"]
    plt.close("all")
