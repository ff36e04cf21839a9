#!/usr/bin/env bash
# The GPU benchmark in one command, for a bare, offline GPU server (python3 with torch, no diffusers/hydra, no
# network): from the repository root, with .whl/ and .cache/landmarks carried (prepared here by `make gpu-bundle`),
#     bash scripts/gpu_bench.sh
# Runs serially (honest timings), all on the embedded demo (100 frames, landmarks from the cache, no dlib, no PyAV):
#   0-2  experiment=seed_table: the seed's settings (latentsync_v1, TAESD, dpmpp 3 steps, CFG 1.5, batch 8, fp16)
#        with compile=none, unet, unet_vae
#   3    the same, compile=unet_vae compile.mode=reduce-overhead (CUDA graphs)
#   4-6  the seed's settings, eager, doing less work per frame: guidance=residual_self (one UNet branch a step),
#        cache=deepcache (interval 3: one full step, two shallow), diffusion.stream_batch=true (the clips in
#        flight share one UNet call)
#   7    the seed's settings, eager, executor=pipelined with input paced at 25 fps, align/restore on the device
#        (kornia) and audio=whisper_window: each stage on its own thread and CUDA stream, first-frame latency and
#        sustained fps measured (the run's "Stream" line; stream fps / first frame s in the table)
#   8    model=latentsync_v16 vae=kl (512 px) with Stream Batch and residual CFG, eager fp16: can v1.6 keep up?
#   9    the seed's settings, eager, batch_frames=16
#   10   model=latentsync_v15 vae=kl steps=2 batch_frames=16, eager fp16
#   11   experiment=search, 4 eager trials of 48 frames (into <runs>_search/: its own table, trials.csv, pareto.csv)
#   12   the seed's settings, eager, with an mp4 output and quality=syncnet (random SyncNet weights: the step's cost)
# then prints one comparison table of the runs (baseline: compile=none). Runs go to results/gpu_bench/<time>/;
# the table (comparison.md/.csv), the log and a tarball of the runs' timings also go to $OUT/gpu_bench/<time>/
# when $OUT is set (the device tool's folder of files that come back).
# Each run is cut off (and listed as incomplete) where it would leave no time for the table within BENCH_BUDGET_S
# seconds (default 570: the device tool stops a command at 600 s).
# Smoke mode, to check the sequence on a CPU: BENCH_DEVICE=cpu BENCH_SMOKE=1 bash scripts/gpu_bench.sh
# (the tiny model in fp32, max_frames=16, steps=1; a few minutes).
# A step fails when its command fails or when a run it made says "status": "failed" in its summary.json (a sweep's
# job fails without failing the sweep); the script then ends with one line naming each failed step and its error.
# For `make gpu-bundle`: BENCH_WHEELS=0 runs on the packages python3 already has (installs nothing: the pass that
# records what the runs import), BENCH_WHL_DIR the folder of wheels to install (default .whl), BENCH_RESULTS the
# folder of the runs (default results/gpu_bench).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${BENCH_DEVICE:-cuda}
SMOKE=${BENCH_SMOKE:-0}
SITE=${BENCH_SITE:-/tmp/site}
BUDGET=${BENCH_BUDGET_S:-570}
WHEELS=${BENCH_WHEELS:-1}
WHL=${BENCH_WHL_DIR:-.whl}
STAMP=$(date +%Y-%m-%d_%H-%M-%S)
RUNS=${BENCH_RESULTS:-results/gpu_bench}/$STAMP
DEST=${OUT:+$OUT/gpu_bench/$STAMP}
DEST=${DEST:-$RUNS}
mkdir -p "$RUNS" "$DEST"
LOG=$DEST/bench.log

die() { echo "error: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

main() {
  local t0 t fails=0
  t0=$(now)
  echo "gpu_bench $STAMP: device=$DEVICE smoke=$SMOKE runs=$RUNS table=$DEST"
  command -v python3 >/dev/null || die "no python3 on PATH"
  local inductor=${TORCHINDUCTOR_CACHE_DIR:-.cache/inductor}
  echo "torch.compile's cache ($inductor): $([ -n "$(ls -A "$inductor" 2>/dev/null)" ] && echo "present (warm compiles)" \
    || echo "empty (cold compiles)")"

  # 1. The wheels the server lacks (the packages the runs import, and their requirements, that the image has not:
  #    `make gpu-bundle` derives the list), installed beside the image's packages; the project runs from this
  #    source tree (not installed)
  compgen -G ".cache/landmarks/*.npz" >/dev/null || die "no landmark cache in .cache/landmarks/: run 'make gpu-bundle' \
and carry .cache/landmarks (and .whl) with the working tree (dlib's model is not on the server)"
  if [ "$WHEELS" = 0 ]; then
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    echo "wheels: none installed (BENCH_WHEELS=0): the runs use $(command -v python3)'s packages"
  else
    compgen -G "$WHL/*.whl" >/dev/null || die "no wheels in $WHL/: run 'make gpu-bundle' on a machine with network \
and carry .whl (and .cache/landmarks) with the working tree"
    t=$(now)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl \
      || die "installing $WHL/*.whl into $SITE failed"
    export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
    echo "wheels installed into $SITE in $(secs "$t" "$(now)") s: $(ls "$WHL" | tr '\n' ' ')"
  fi
  export PYTHONUNBUFFERED=1
  python3 -c "import torch, diffusers, hydra, transformers; print(f'python3 {__import__(\"sys\").version.split()[0]}, \
torch {torch.__version__}, diffusers {diffusers.__version__}, hydra {hydra.__version__}, transformers \
{transformers.__version__}, cuda: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}')" \
    || die "python3 cannot import the benchmark's core packages (above): is $WHL complete? (make gpu-bundle)"
  if [ "$DEVICE" = cuda ]; then
    python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || die "device=cuda but torch sees no GPU"
  fi

  # the run settings: the seed's on the GPU; the CPU-sized model, 16 frames, 1 step in smoke mode
  local model=latentsync_v1 precision=fp16 steps=3 v15=latentsync_v15 v15_steps=2 v16=latentsync_v16 extra=()
  local qextra=(quality.min_frames=50)
  if [ "$SMOKE" = 1 ]; then
    model=tiny precision=fp32 steps=1 v15=tiny v15_steps=1 v16=tiny extra=(max_frames=16) qextra=(quality.min_frames=8)
  fi
  local common=(device="$DEVICE" sink=none print_batches=false "${extra[@]}")
  local seed=(model=$model vae=tiny scheduler=dpmpp precision=$precision steps=$steps guidance_scale=1.5
              batch_frames=8 face.cache=true)

  # 2. The landmark cache must hold every frame the runs stream: then dlib (not on the server) is never loaded
  python3 - "${extra[@]}" <<'EOF' || die "landmark cache missing or short: run 'make gpu-bundle' and carry .cache/landmarks"
import sys
import numpy as np
from omegaconf import OmegaConf
from lipsync_lab.build import LANDMARK_CACHE, build_source
from lipsync_lab.config import compose
from lipsync_lab.face.cache import cache_path

cfg = compose(["face.cache=true", "device=cpu", *sys.argv[1:]])
source = build_source(cfg)
path = cache_path(cfg.face.get("cache_dir") or LANDMARK_CACHE, source.content_key(),
                  OmegaConf.to_container(cfg.face.detector, resolve=True))
have = len(np.load(path)["landmarks"]) if path.is_file() else 0
print(f"landmark cache {path}: {have} frames, the runs need {source.n_frames}")
sys.exit(have < source.n_frames)
EOF

  # 3. The runs, one after another; a failed run is listed as failed in the table and the others still run
  local names=() walls=() states=() failed=()
  step() {
    local name=$1 t rc=0 left state out mark why
    shift
    echo
    echo "=== $name"
    left=$(awk -v t0="$t0" -v now="$(now)" -v b="$BUDGET" 'BEGIN { printf "%d", b - (now - t0) - 20 }')
    if [ "$left" -lt 15 ]; then
      names+=("$name"); walls+=(0); states+=("SKIPPED (BENCH_BUDGET_S=$BUDGET spent)"); fails=$((fails + 1))
      failed+=("'$name' (skipped: BENCH_BUDGET_S=$BUDGET spent)")
      echo "=== $name: ${states[-1]}"
      return
    fi
    echo "+ python3 $*   (cut off after $left s)"
    out=$(mktemp)
    mark=$RUNS/.step_started
    touch "$mark"
    t=$(now)
    # the run's output is shown as it comes and kept, so that a failure can be reported by its own error line
    timeout -k 10 "$left" python3 "$@" 2>&1 | tee "$out" || rc=${PIPESTATUS[0]}
    case $rc in
      0) state=ok ;;
      124 | 137) state="TIMED OUT after $left s (BENCH_BUDGET_S=$BUDGET)" ;;
      *) state="FAILED (exit $rc)" ;;
    esac
    # a sweep exits 0 when one of its jobs fails: each run folder written by this step says how it ended
    why=$(find "$RUNS" -name summary.json -newer "$mark" -print0 | xargs -0 -r python3 -c '
import json, os, sys
for path in sys.argv[1:]:
    s = json.load(open(path))
    if s.get("status") == "failed":
        print(os.path.basename(os.path.dirname(path)) + ": " + str(s.get("error")))' 2>&1 | head -1) || true
    if [ -n "$why" ] && [ $rc = 0 ]; then
      rc=1 state="FAILED (a run failed)"
    fi
    if [ $rc != 0 ]; then  # the reason, in one line: the failed run's error, else the command's last words
      [ -n "$why" ] || why=$(grep -E "^error: " "$out" | tail -1) || true
      [ -n "$why" ] || why=$(grep -v "^[[:space:]]*$" "$out" | tail -1) || true
      fails=$((fails + 1)) failed+=("'$name' (${why:-no output})")
    fi
    rm -f "$out" "$mark"
    names+=("$name"); walls+=("$(secs "$t" "$(now)")"); states+=("$state")
    echo "=== $name: ${walls[-1]} s, ${states[-1]}"
  }
  # the sweep and the single runs side by side in $RUNS, numbered 0-12: the table lists them in that order
  step "0-2 seed_table (compile=none,unet,unet_vae)" -m lipsync_lab experiment=seed_table "${seed[@]}" "${common[@]}" \
    "hydra.sweep.dir=$RUNS" "hydra.sweep.subdir='\${hydra.job.num}_compile=\${hydra.runtime.choices.compile}'" \
    '~hydra.callbacks.compare'
  step "3 unet_vae reduce-overhead" -m lipsync_lab "${seed[@]}" "${common[@]}" compile=unet_vae \
    compile.mode=reduce-overhead "hydra.run.dir=$RUNS/3_unet_vae_reduce-overhead"
  # doing less work per frame (issue #13), at the seed's settings: one UNet branch a step, shallow steps, clips
  # at different steps sharing one call
  step "4 residual CFG, self-negative" -m lipsync_lab "${seed[@]}" "${common[@]}" guidance=residual_self \
    "hydra.run.dir=$RUNS/4_residual_self"
  step "5 DeepCache, interval 3" -m lipsync_lab "${seed[@]}" "${common[@]}" cache=deepcache cache.interval=3 \
    "hydra.run.dir=$RUNS/5_deepcache_i3"
  step "6 Stream Batch" -m lipsync_lab "${seed[@]}" "${common[@]}" diffusion.stream_batch=true \
    "hydra.run.dir=$RUNS/6_stream_batch"
  step "7 pipelined, paced, kornia, whisper_window" -m lipsync_lab "${seed[@]}" "${common[@]}" executor=pipelined \
    source.pace=realtime align=kornia restore=kornia audio=whisper_window "hydra.run.dir=$RUNS/7_pipelined_paced"
  step "8 v1.6 + KL, Stream Batch, residual CFG" -m lipsync_lab "${seed[@]}" "${common[@]}" model=$v16 vae=kl \
    diffusion.stream_batch=true guidance=residual_self "hydra.run.dir=$RUNS/8_v16_kl_stream_batch_residual"
  step "9 eager, batch 16" -m lipsync_lab "${seed[@]}" "${common[@]}" batch_frames=16 "hydra.run.dir=$RUNS/9_b16"
  step "10 v1.5 + KL VAE, 2 steps, batch 16" -m lipsync_lab "${seed[@]}" "${common[@]}" model=$v15 vae=kl \
    steps=$v15_steps batch_frames=16 "hydra.run.dir=$RUNS/10_v15_kl_s2_b16"
  # a small search (experiment=search, eager: compile stays out of a step that must finish), in a folder of its own
  # beside the runs (its trials are not rows of the table): that the study runs on this server, and the bundle
  # carries optuna
  step "11 search, 4 trials, eager" -m lipsync_lab experiment=search device="$DEVICE" model=$model \
    precision=$precision max_frames=48 compile=none compile.mode=default hydra.sweeper.n_trials=4 \
    'hydra.sweeper.enqueue=[{compile:none}]' hydra.sweeper.sampler.population_size=2 "hydra.sweep.dir=${RUNS}_search"
  # LatentSync's sync evaluation after the stream (issue #15): an mp4 output scored by SyncNet on random weights (no
  # syncnet_v2.model on the server: the figures are labelled so; what counts is the step's cost, kept out of the
  # stage timings, and that it runs there)
  step "12 quality=syncnet, mp4 output" -m lipsync_lab "${seed[@]}" device="$DEVICE" print_batches=false "${extra[@]}" \
    sink=mp4 quality=syncnet "${qextra[@]}" "hydra.run.dir=$RUNS/12_quality_syncnet"

  # 4. One table of the runs
  echo
  echo "=== comparison (baseline compile=none)"
  t=$(now)
  python3 -m lipsync_lab.compare "$RUNS" --baseline compile=none --out "$RUNS" \
    || { fails=$((fails + 1)); failed+=("'comparison'"); }
  if [ "$DEST" != "$RUNS" ]; then
    cp "$RUNS"/comparison.md "$RUNS"/comparison.csv "$DEST"/ 2>/dev/null || true
    # each run's timings, summary and overrides in one file (the crops stay behind: they are the bulk)
    tar -czf "$DEST/runs.tar.gz" -C "$RUNS" --exclude=crops.npz . || true
    mkdir -p "$DEST/search" && cp "${RUNS}_search"/{trials.csv,pareto.csv,comparison.md} "$DEST/search/" 2>/dev/null \
      || true
  fi
  echo
  echo "Wall time per step:"
  local i
  for i in "${!names[@]}"; do printf "  %-44s %8s s  %s\n" "${names[$i]}" "${walls[$i]}" "${states[$i]}"; done
  printf "  %-44s %8s s\n" "total (install, checks, runs, table)" "$(secs "$t0" "$(now)")"
  echo "Runs: $RUNS; table: $DEST/comparison.md"
  # one line naming each failed step and its error (make gpu-bundle reports it as the reason the check failed)
  local list
  list=$(printf '%s; ' "${failed[@]}")
  [ "$fails" = 0 ] || die "$fails step(s) failed: ${list%; }"
}

main "$@" 2>&1 | tee "$LOG"
