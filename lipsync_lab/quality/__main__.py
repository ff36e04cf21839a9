"""Evaluate existing runs' quality: SyncNet LSE-C / LSE-D / AV offset of the output, reconstruction metrics.

    python -m lipsync_lab.quality RUN… [--syncnet syncnet_v2.model] [--s3fd sfd_face.pth] [--min-frames 50]

RUN: run or sweep folders (globs allowed; a sweep's finished jobs in job order). Each run's figures go into its
summary.json (`summary.quality`), where the comparison table and the notebooks read them, and are printed. Without
--syncnet the weights are random: the figures are labelled so and judge nothing. Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys

from lipsync_lab.errors import LipsyncInputError, one_line
from lipsync_lab.quality.evaluate import QualitySettings, evaluate_run, format_quality
from lipsync_lab.quality.syncnet import check_file
from lipsync_lab.schema import SCHEMA


def attach(run_dir, quality: dict) -> None:
    """Write a run's quality figures into its summary.json (`summary.quality`)."""
    from lipsync_lab.results import read_record, write_run

    record = read_record(run_dir)
    record.setdefault("summary", {})["quality"] = quality
    write_run(run_dir, record)


def main(argv: list[str] | None = None) -> int:
    defaults = QualitySettings()
    parser = argparse.ArgumentParser(prog="python -m lipsync_lab.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run or sweep folders (globs allowed)")
    parser.add_argument("--syncnet", help="syncnet_v2.model (default: seeded random weights, labelled as such)")
    parser.add_argument("--s3fd", help="sfd_face.pth: S3FD faces, as upstream (default: the run's own boxes)")
    parser.add_argument("--min-frames", type=int, default=defaults.min_frames,
                        help=f"shortest face track scored (default {defaults.min_frames}, upstream's)")
    parser.add_argument("--max-frames", type=int, default=defaults.max_frames,
                        help=f"frames of each output read (default {defaults.max_frames})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from lipsync_lab.results import run_index

    try:
        for key, value in (("min_frames", args.min_frames), ("max_frames", args.max_frames)):  # the run's ranges
            problem = SCHEMA[f"quality.{key}"].problem(value)
            if problem:
                raise LipsyncInputError(f"--{key.replace('_', '-')} {value}", problem)
        check_file(args.syncnet, "SyncNet weights")
        check_file(args.s3fd, "S3FD weights")
        settings = QualitySettings(syncnet=args.syncnet, s3fd=args.s3fd, min_frames=args.min_frames,
                                   max_frames=args.max_frames, seed=args.seed, device=args.device)
        index = run_index(args.runs)
        if index.empty:
            raise LipsyncInputError(" ".join(args.runs), "no run folders found")
        for run in index.itertuples():
            if run.status not in ("ok", "interrupted"):
                print(f"{run.run_dir}: skipped ({run.status}: {run.error})")
                continue
            quality = evaluate_run(run.run_dir, settings)
            attach(run.run_dir, quality)
            print(f"{run.run_dir}\n{format_quality(quality)}")
    except LipsyncInputError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
