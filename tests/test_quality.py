"""quality/: SyncNet's scores (offset search, confidence formula, MFCC windows), face tracks and upstream's crop,
reconstruction metrics, and the `quality=syncnet` step of a run / `python -m lipsync_lab.quality` over runs.
(The SyncNet forward against an independent restatement: test_syncnet_reference.py.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from lipsync_lab.config import compose
from lipsync_lab.media.source import SAMPLES_PER_FRAME
from lipsync_lab.quality import faces
from lipsync_lab.quality.reconstruction import reconstruction
from lipsync_lab.quality.syncnet import mfcc, random_syncnet, shift_distances, sync_scores, windows
from lipsync_lab.run import run

PASSTHROUGH = ["diffusion=passthrough", "print_batches=false", "batch_frames=8"]


@pytest.mark.parametrize("shift", [-4, 0, 3, 15])
def test_offset_search_finds_a_known_shift(shift):
    """Lips of frame i made from the audio of frame i − shift: the search names that shift (video lags: +)."""
    gen = torch.Generator().manual_seed(7)
    audio = torch.randn(60, 16, generator=gen)
    lips = torch.randn(60, 16, generator=gen)
    for i in range(60):
        if 0 <= i - shift < 60:
            lips[i] = audio[i - shift]
    scores = sync_scores(lips, audio, vshift=15)
    assert scores["av_offset"] == shift
    assert scores["lse_c"] > 0


def test_confidence_formula_on_a_hand_computed_case():
    """d = 1, lips 0, audio 1 2 3, vshift 1: padded audio 0 1 2 3 0 → per-shift mean distances 1, 2, 5/3 →
    LSE-D 1 at the first shift (offset +1), LSE-C = median − min = 2/3 (pairwise_distance's eps 1e-6 aside)."""
    lips = torch.zeros(3, 1)
    audio = torch.tensor([[1.0], [2.0], [3.0]])
    got = sync_scores(lips, audio, vshift=1)
    assert got["av_offset"] == 1
    assert got["lse_d"] == pytest.approx(1.0, abs=1e-5)
    assert got["lse_c"] == pytest.approx(2 / 3, abs=1e-5)


def test_shift_distances_against_a_plain_loop():
    gen = torch.Generator().manual_seed(3)
    lips, audio = torch.randn(9, 5, generator=gen).double(), torch.randn(9, 5, generator=gen).double()
    v = 4
    padded = np.concatenate([np.zeros((v, 5)), audio.numpy(), np.zeros((v, 5))])
    want = np.array([[np.linalg.norm(lips[i].numpy() - padded[i + j] + 1e-6) for j in range(2 * v + 1)]
                     for i in range(9)])
    np.testing.assert_allclose(shift_distances(lips, audio, v).numpy(), want, rtol=1e-12)
    mean = want.mean(0)
    got = sync_scores(lips, audio, v)
    assert got["lse_d"] == pytest.approx(mean.min()) and got["lse_c"] == pytest.approx(np.median(mean) - mean.min())


def test_mfcc_windows_line_up_with_video_frames():
    """4 MFCC steps per 25-fps frame: a burst in frame k lights the steps whose 25-ms window reaches into it
    (4k − 2 … 4k + 3, and 4k + 4, which the pre-emphasis filter hands the burst's last sample), the two wholly
    inside it among them; a clip of T frames gives 4T − 1 steps and T − 5 sync windows."""
    frames, k = 20, 9
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 1e-4, frames * SAMPLES_PER_FRAME)
    audio[k * SAMPLES_PER_FRAME:(k + 1) * SAMPLES_PER_FRAME] += 0.5 * np.sin(np.arange(SAMPLES_PER_FRAME) * 0.3)
    coefficients = mfcc(audio)
    assert coefficients.shape == (13, 4 * frames - 1)
    energy = coefficients[0]  # log frame energy (appendEnergy)
    loud = np.flatnonzero(energy > energy.min() + 5)
    assert loud.min() == 4 * k - 2 and loud.max() == 4 * k + 4 and {4 * k, 4 * k + 1} <= set(loud)
    assert windows(frames, coefficients.shape[1]) == frames - 5
    assert windows(4, 15) == 0


def test_tracks_split_at_gaps_and_new_starts():
    kept, dropped = faces.tracks(np.r_[0:12, 14:16, 20:40], min_frames=10, starts={30})
    assert kept == [(0, 12), (20, 30), (30, 40)] and dropped == [(14, 16)]


def test_upstream_crop_geometry_and_grey_border():
    """A box of half-size 10 centred at (50, 40): 28 px wide centred across, from 10 above the centre to 18 below;
    beyond the frame the crop is grey 110; BGR out."""
    assert faces.crop_window(50, 40, 10) == (36, 30, 64, 58)
    frame = np.zeros((60, 80, 3), np.uint8)
    frame[..., 0] = 200  # red in RGB
    out = faces.crop(frame, 5.0, 5.0, 10.0)  # window (-9, -5)…(19, 23): its top-left corner is off the frame
    assert out.shape == (224, 224, 3)
    assert (out[0, 0] == 110).all()
    assert out[-1, -1].tolist() == [0, 0, 200]  # BGR: red last


def test_reconstruction_metrics_on_known_differences():
    rng = np.random.default_rng(1)
    original = rng.integers(0, 200, (3, 32, 32, 3), dtype=np.uint8)
    region = np.zeros((32, 32), np.uint8)
    region[16:, 8:24] = 1
    same = reconstruction(original, original, region)
    assert same["psnr_db"] == math.inf and same["mean_abs"] == 0 and same["ssim"] == pytest.approx(1.0, abs=1e-9)
    shifted = original.copy()
    shifted[:, 16:, 8:24] += 5
    got = reconstruction(shifted, original, region)
    assert got["mean_abs"] == pytest.approx(5.0)
    assert got["psnr_db"] == pytest.approx(10 * math.log10(255 ** 2 / 25))
    assert got["ssim"] < 1


def test_run_with_quality_syncnet_writes_labelled_random_weight_fields(tmp_path):
    cfg = compose(["max_frames=16", "quality=syncnet", "quality.min_frames=8", "source.seconds=0.64",
                   *PASSTHROUGH])
    summary = run(cfg, tmp_path)
    record = json.loads((tmp_path / "summary.json").read_text())
    sync = record["summary"]["quality"]["syncnet"]
    assert sync == summary["quality"]["syncnet"]
    assert sync["random_weights"] is True and "RANDOM WEIGHTS" in sync["label"]
    assert sync["weights"] == "random (seed 0)" and sync["faces"] == "run"
    assert len(sync["tracks"]) == 1 and sync["tracks"][0]["windows"] == 11 and sync["frames_evaluated"] == 16
    assert all(isinstance(sync[k], float) for k in ("lse_c", "lse_d")) and isinstance(sync["av_offset"], int)
    assert sync["why"] is None and sync["cost_s"] > 0
    assert "no ground truth" in record["summary"]["quality"]["reconstruction"]["why"]  # the demo
    boxes = np.load(tmp_path / "face_boxes.npz")
    assert boxes["frames"].tolist() == list(range(16)) and boxes["boxes"].shape == (16, 4)
    # the timed stream knows nothing of it: no quality rows among the stage timings
    import pandas as pd

    assert set(pd.read_parquet(tmp_path / "timings.parquet")["stage"]).isdisjoint({"quality", "syncnet"})


def test_too_short_tracks_say_why(tmp_path):
    cfg = compose(["max_frames=8", "quality=syncnet", "source.seconds=0.32", *PASSTHROUGH])
    summary = run(cfg, tmp_path)
    sync = summary["quality"]["syncnet"]
    assert sync["lse_c"] is None and "shorter than min_frames=50" in sync["why"] and sync["dropped"] == [[0, 8]]


def test_passthrough_reconstructs_its_input_exactly(tmp_path, synthetic_clip):
    """A clip driven by its own audio through diffusion=passthrough: 0 drift, infinite PSNR, SSIM 1."""
    cfg = compose(["source=file", f"source.video={synthetic_clip}", "max_frames=16", "quality=syncnet",
                   "quality.min_frames=8", *PASSTHROUGH])
    summary = run(cfg, tmp_path)
    recon = summary["quality"]["reconstruction"]
    assert recon["frames"] == 16 and recon["psnr_db"] == math.inf and recon["mean_abs"] == 0
    assert recon["ssim"] == pytest.approx(1.0, abs=1e-9)
    assert recon["random_weights"] is False  # passthrough has no model: its figures are not weight-dependent
    crops = np.load(tmp_path / "crops.npz")
    assert crops["originals"].shape == crops["crops"].shape


def _truncated_syncnet(tmp_path):
    path = tmp_path / "syncnet_v2.model"
    torch.save(random_syncnet(0).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("key", ["syncnet", "s3fd"])
def test_a_bad_weights_file_is_one_line_and_exit_2(tmp_path, key):
    bad = _truncated_syncnet(tmp_path)
    cmd = [sys.executable, "-m", "lipsync_lab", "quality=syncnet", f"quality.{key}={bad}", "max_frames=8",
           "diffusion=passthrough", f"hydra.run.dir={tmp_path / 'run'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in out.stderr
    # the stream never ran: the weights are read before it
    assert not (tmp_path / "run" / "timings.parquet").exists()


def test_quality_command_over_existing_runs(tmp_path):
    run_dir = tmp_path / "run"
    run(compose(["max_frames=16", "source.seconds=0.64", *PASSTHROUGH]), run_dir)
    assert "quality" not in json.loads((run_dir / "summary.json").read_text())["summary"]
    cmd = [sys.executable, "-m", "lipsync_lab.quality", str(tmp_path), "--min-frames", "8"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RANDOM WEIGHTS" in out.stdout and "LSE-C" in out.stdout and "cost" in out.stdout
    sync = json.loads((run_dir / "summary.json").read_text())["summary"]["quality"]["syncnet"]
    assert sync["random_weights"] and sync["frames_evaluated"] == 16
    bad = _truncated_syncnet(tmp_path)
    out = subprocess.run([*cmd, "--syncnet", str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and str(bad) in out.stderr
    out = subprocess.run([*cmd[:-1], "3"], capture_output=True, text=True, cwd=ROOT, timeout=300)  # the run's range
    assert out.returncode == 2 and out.stderr.strip().splitlines() == ["error: --min-frames 3: expects an integer ≥ 6"]


def test_s3fd_faces_path_with_a_detector_that_finds_the_runs_boxes(tmp_path, monkeypatch):
    """quality.s3fd: a stand-in detector that returns the run's own boxes gives crop agreement IoU 1 and the same
    scores as the run's boxes; a detector that finds nothing says so."""
    from lipsync_lab.quality import evaluate, s3fd

    run_dir = tmp_path / "run"
    run(compose(["max_frames=16", "source.seconds=0.64", *PASSTHROUGH]), run_dir)
    with np.load(run_dir / faces.BOXES_FILE) as f:
        by_frame = dict(zip(f["frames"].tolist(), f["boxes"]))

    class Finds:
        frame = 0

        def detect(self, rgb, conf_th, scale):
            box = by_frame[self.frame]
            self.frame += 1
            return np.array([[*box, 0.99]], np.float32)

    monkeypatch.setattr(s3fd.S3FD, "from_file", staticmethod(lambda path, device="cpu": Finds()))
    own = evaluate.evaluate_run(run_dir, evaluate.QualitySettings(min_frames=8))["syncnet"]
    got = evaluate.evaluate_run(run_dir, evaluate.QualitySettings(min_frames=8, s3fd="sfd_face.pth"))["syncnet"]
    assert got["faces"] == "s3fd" and got["crop_iou_run_vs_s3fd"]["frames"] == 16
    assert got["crop_iou_run_vs_s3fd"]["mean_iou"] == pytest.approx(1.0)
    assert (got["lse_c"], got["lse_d"], got["av_offset"]) == (own["lse_c"], own["lse_d"], own["av_offset"])

    class FindsNothing:
        def detect(self, rgb, conf_th, scale):
            return np.zeros((0, 5), np.float32)

    monkeypatch.setattr(s3fd.S3FD, "from_file", staticmethod(lambda path, device="cpu": FindsNothing()))
    none = evaluate.evaluate_run(run_dir, evaluate.QualitySettings(min_frames=8, s3fd="sfd_face.pth"))["syncnet"]
    assert none["lse_c"] is None and none["why"] == "no face in the output"


def test_speed_vs_sync_marks_random_weights_and_unscored_runs():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from lipsync_lab.lab import with_quality
    from lipsync_lab.plots import speed_vs_sync

    table = pd.DataFrame([dict(run="0_a", status="ok", fps=4.0, lse_c=1.5, sync_random_weights=True),
                          dict(run="1_b", status="ok", fps=6.0, lse_c=None, sync_random_weights=None),
                          dict(run="2_c", status="failed", fps=None, lse_c=None, sync_random_weights=None)])
    ax = speed_vs_sync(table)
    assert "RANDOM SyncNet weights" in ax.get_title() and "1 without SyncNet scores" in ax.get_title()
    (points,) = ax.collections
    assert points.get_offsets().tolist() == [[4.0, 1.5]]
    ax = speed_vs_sync(table.assign(sync_random_weights=False))
    assert "RANDOM" not in ax.get_title()
    assert with_quality(["sink=none", "steps=1"], None) == ["steps=1", "quality=syncnet", "sink=mp4"]


def test_an_output_without_audio_says_why(tmp_path):
    """The sync score needs the output's speech: a video without an audio track gets `why`, not a failure."""
    from conftest import write_video
    from lipsync_lab.quality import evaluate

    run_dir = tmp_path / "run"
    run(compose(["max_frames=16", "source.seconds=0.64", *PASSTHROUGH]), run_dir)
    import av

    with av.open(str(run_dir / "output.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    write_video(run_dir / "output.mp4", frames)  # the same frames, no audio track
    sync = evaluate.evaluate_run(run_dir, evaluate.QualitySettings(min_frames=8))["syncnet"]
    assert sync["lse_c"] is None and sync["why"].startswith("no audio to score against in output.mp4: has no audio")
