"""What the diffusion stage's speed variants buy, and how far they move the output (a benchmark, not a test).

    python scripts/bench_diffusion_variants.py [--seeds 5] [--reps 2] [--only guidance deepcache stream_batch]
                                               [--device cpu] [--model tiny]

Three comparisons, each against its plain counterpart on the same built models and the same inputs:

- **guidance** at the seed's settings (TAESD, DPM-Solver++ 3 steps, g 1.5, batches of 8): `cfg` against
  `residual_self`, `residual_once`, `cfg_cache`;
- **deepcache** at upstream's sampling (DDIM 20 steps, g 1.5): `cache=none` against `cache=deepcache` (interval 3,
  branch 0: upstream's DeepCacheSDHelper settings);
- **stream_batch** at the seed's settings: a stream of `--batches` batches through the plain loop and through
  `diffusion.stream_batch=true` (submit per batch, flush at the end): throughput, each clip's time in the stage, and
  whether the output is the same.

Per weight seed (`seed=0..N-1`: the UNet's and VAE's random weights) the stages are built once, every variant takes
one warm-up batch, then `--reps` timed batches in a rotated order (the machine's drift falls on every variant
alike). Speed-up = the plain variant's denoise time / the variant's, paired per repetition: median and worst over
seeds × reps. Two clocks: the denoise sub-stage's wall time (the stage's own synchronised timer), and the process
CPU time of the whole stage call (all eight sub-stages: VAE encode and decode included, which no variant changes) —
on a shared machine the CPU time is the steadier figure of the work done. Drift = mean |Δ| grey levels over the regenerated
(mouth) region of the 256-px crop against the plain variant's output, the same inputs and weights: median and worst
over seeds. Faces and audio features are random (seeded): with random weights, drift says how much the variant
changes the computation, not whether lips still match speech.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from lipsync_lab.build import build_diffusion
from lipsync_lab.config import compose
from lipsync_lab.timing import BatchTimer

SEED_SETTINGS = ["vae=tiny", "scheduler=dpmpp", "steps=3", "guidance_scale=1.5", "batch_frames=8"]
GUIDANCE = ["cfg", "residual_self", "residual_once", "cfg_cache"]
UPSTREAM_SAMPLING = ["vae=tiny", "scheduler=ddim", "steps=20", "guidance_scale=1.5", "batch_frames=8"]
CACHE = {"none": ["cache=none"], "deepcache i3": ["cache=deepcache", "cache.interval=3", "cache.branch=0"]}


def inputs(n: int, frames: int, seed: int):
    rng = np.random.default_rng(1000 + seed)
    return [(rng.integers(0, 256, (frames, 256, 256, 3), dtype=np.uint8),
             torch.from_numpy(rng.standard_normal((frames, 50, 384), dtype=np.float32))) for _ in range(n)]


def region_drift(a: torch.Tensor, b: torch.Tensor, region: np.ndarray) -> float:
    delta = (a.cpu().numpy().astype(np.int16) - b.cpu().numpy().astype(np.int16))
    return float(np.abs(delta)[:, region].mean())


def timed(stage, faces, audio, batch: int):
    """(output, denoise wall s, the whole call's process CPU s, UNet frame-evaluations as text) of one batch."""
    timer = BatchTimer(batch, len(faces), warmup=False)
    cpu = time.process_time()
    out = stage(faces, audio, timer)
    shallow = sum(n for kind, n in stage.unet_evals.items() if kind != "full")
    evals = f"{sum(stage.unet_evals.values())}" + (f" ({shallow} shallow)" if shallow else "")
    return out, timer.seconds["denoise"], time.process_time() - cpu, evals


def compare_stages(name: str, settings: dict[str, list[str]], common: list[str], args) -> None:
    """Variants of one stage built from `common` + each variant's overrides; the first is the plain one."""
    names = list(settings)
    wall = {v: [] for v in names}
    cpu = {v: [] for v in names}
    evals, drifts = {}, {v: [] for v in names}
    for seed in range(args.seeds):
        stages = {v: build_diffusion(compose([*common, *extra, f"seed={seed}", f"model={args.model}"]),
                                     torch.device(args.device)) for v, extra in settings.items()}
        region = stages[names[0]].regenerated_region()
        batches = inputs(args.reps + 1, stages[names[0]].frames, seed)
        for v in names:  # warm-up: first-call costs of each shape
            stages[v](*batches[0], BatchTimer(-1, len(batches[0][0]), warmup=True))
        for r in range(args.reps):
            k = (seed * args.reps + r) % len(names)
            outputs = {}
            for v in names[k:] + names[:k]:
                outputs[v], w, c, evals[v] = timed(stages[v], *batches[r + 1], r)
                wall[v].append(w)
                cpu[v].append(c)
            for v in names:
                drifts[v].append(region_drift(outputs[v], outputs[names[0]], region))
    plain = names[0]
    print(f"\n{name}: {args.seeds} weight seeds × {args.reps} batches, {args.model} on {args.device}; "
          f"speed-up and drift against {plain}")
    print(f"{'variant':<16}{'UNet frames':>18}{'denoise ms':>12}{'× wall med':>12}{'(worst)':>9}"
          f"{'stage CPU ms':>14}{'× CPU med':>11}{'(worst)':>9}{'drift med':>11}{'(worst)':>9}")
    for v in names:
        w = [p / x for p, x in zip(wall[plain], wall[v])]
        c = [p / x for p, x in zip(cpu[plain], cpu[v])]
        print(f"{v:<16}{evals[v]:>18}{1000 * statistics.median(wall[v]):>12.0f}{statistics.median(w):>11.2f}×"
              f"{min(w):>8.2f}×{1000 * statistics.median(cpu[v]):>14.0f}{statistics.median(c):>10.2f}×"
              f"{min(c):>8.2f}×{statistics.median(drifts[v]):>11.3f}{max(drifts[v]):>9.3f}")


def stream_batch(args) -> None:
    """The plain loop against Stream Batch over one stream of `--batches` batches, per weight seed."""
    fps = {False: [], True: []}
    held = {False: [], True: []}
    equal = []
    for seed in range(args.seeds):
        outs = {}
        for streamed in (False, True):
            cfg = compose([*SEED_SETTINGS, f"seed={seed}", f"model={args.model}",
                           f"diffusion.stream_batch={str(streamed).lower()}"])
            stage = build_diffusion(cfg, torch.device(args.device))
            batches = inputs(args.batches, stage.frames, seed)
            warm = [stage(*batches[0], BatchTimer(-1, stage.frames, warmup=True))]  # warm-up (plain call)
            del warm
            entered, got = {}, {}
            start = time.perf_counter()
            for i, (faces, audio) in enumerate(batches):
                timer = BatchTimer(i, len(faces), warmup=False)
                entered[i] = time.perf_counter()
                if streamed:
                    left = stage.submit(faces, audio, timer, tag=i)
                else:
                    left = [(i, stage(faces, audio, timer))]
                for tag, out in left:
                    got[tag] = (out, time.perf_counter() - entered[tag])
            for tag, out in (stage.flush() if streamed else []):
                got[tag] = (out, time.perf_counter() - entered[tag])
            total = time.perf_counter() - start
            fps[streamed].append(len(batches) * stage.frames / total)
            held[streamed].append(statistics.median(s for _, s in got.values()))
            outs[streamed] = [got[i][0] for i in range(len(batches))]
        equal.append(all(torch.equal(a, b) for a, b in zip(outs[False], outs[True])))
    print(f"\nstream_batch: {args.seeds} weight seeds, a stream of {args.batches} batches of 8 frames, "
          f"{args.model} on {args.device}, unpaced")
    print(f"{'':<16}{'fps med':>9}{'(worst)':>9}{'clip s in stage med':>21}{'× fps med':>11}")
    for streamed in (False, True):
        ratio = [s / p for s, p in zip(fps[streamed], fps[False])]
        print(f"{'stream batch' if streamed else 'plain loop':<16}{statistics.median(fps[streamed]):>9.2f}"
              f"{min(fps[streamed]):>9.2f}{statistics.median(held[streamed]):>21.2f}"
              f"{statistics.median(ratio):>10.2f}×")
    print(f"output equal to the plain loop's, bit for bit: {sum(equal)} of {len(equal)} seeds")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="weight seeds (median and worst over them)")
    ap.add_argument("--reps", type=int, default=2, help="timed batches per seed and variant")
    ap.add_argument("--batches", type=int, default=8, help="stream length for stream_batch")
    ap.add_argument("--only", nargs="+", default=["guidance", "deepcache", "stream_batch"],
                    choices=["guidance", "deepcache", "stream_batch"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tiny", help="model preset (tiny on the CPU)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "guidance" in args.only:
        compare_stages("guidance (seed settings: TAESD, DPM-Solver++ 3 steps, g 1.5, batch 8)",
                       {g: [f"guidance={g}"] for g in GUIDANCE}, SEED_SETTINGS, args)
    if "deepcache" in args.only:
        compare_stages("deepcache (upstream sampling: TAESD, DDIM 20 steps, g 1.5, batch 8)", CACHE,
                       UPSTREAM_SAMPLING, args)
    if "stream_batch" in args.only:
        stream_batch(args)


if __name__ == "__main__":
    main()
