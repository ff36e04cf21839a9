#!/usr/bin/env bash
# Prepare the GPU benchmark (scripts/gpu_bench.sh) for a bare, offline GPU server; run here, with network (`make
# gpu-bundle`). Makes the two ignored folders that travel with the working tree:
#   .whl/             wheels of the packages the benchmark's runs import and the server lacks, with their
#                     requirements, for CPython 3.12 manylinux x86_64, pinned to this venv's versions (the server's
#                     torch, transformers, numpy, ... are used as they are)
#   .cache/landmarks  the embedded demo's per-frame landmarks (face.cache=true), so the server needs no dlib
# The list of wheels is derived, not kept by hand: gpu_bench.sh's smoke sequence runs in this venv with every
# process's imports recorded (scripts/import_log/sitecustomize.py), and scripts/bundle_deps.py maps the imported
# files to their distributions, drops the server's, and closes the rest under Requires-Dist; so a run added to
# gpu_bench.sh brings its packages along. Then the check: the smoke sequence again, in a throw-away venv that holds
# only the server's packages (those installed here, at this venv's versions) and the bundle; a failed step fails
# this script. Phases:
#   1/4 landmark cache   2/4 record the runs' imports   3/4 wheels into .whl/   4/4 check on a server-like venv
# and ends by printing each phase's wall time, the device command and its carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WHL=.whl
[ -x "$PY" ] || { echo "error: $PY not found: run 'make install' first (or set PY=...)" >&2; exit 1; }
VENV_BIN=$(cd "$(dirname "$PY")" && pwd)
STAMP=$(date +%Y-%m-%d_%H-%M-%S)
LOGS=results/gpu_bundle/$STAMP  # the two smoke sequences' logs, and their runs if one fails (ignored: results/)
TMP=$(mktemp -d)                # the import log, the throw-away venv and its site folder: removed on exit
trap 'rm -rf "$TMP"' EXIT

# The server image's Python packages (.library/device/KINDS.md, "Python packages already there", 2026-11-17)
SERVER_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp"
# versions seen there (KINDS.md's pip list row), checked against the bundle's version bounds
SERVER_VERSIONS="huggingface-hub=1.33.0 safetensors=0.8.0 numpy=2.5.2 torch=2.11.0 transformers=5.17.0 tokenizers=0.23.2"
SERVER_PYTHON=3.12  # the server's python3: wheels are fetched, and environment markers evaluated, for it
SERVER=(--server "$SERVER_PACKAGES" --versions "$SERVER_VERSIONS" --python "$SERVER_PYTHON")

die() { echo "error: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
PHASES=()
phase_done() {  # name, start time: printed now and again in the summary at the end
  PHASES+=("$(printf "  %-44s %8s s" "$1" "$(secs "$2" "$(now)")")")
  echo "${PHASES[-1]}"
}
# pip, less the warnings of a local pip config's missing index folders
pip_() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
# gpu_bench.sh's smoke sequence (CPU, tiny model) with the given environment (python3 via PATH, ...); its output
# goes to $LOGS/<what>.log, its runs under $LOGS/<what>/. Its time budget is there for the device tool's limit on one
# command; here it would only cut a busy machine's runs short, so it is an hour (SMOKE_BUDGET_S), against a hang.
smoke() {
  local what=$1
  shift
  mkdir -p "$LOGS"
  env -u OUT -u PYTHONPATH "$@" BENCH_DEVICE=cpu BENCH_SMOKE=1 BENCH_BUDGET_S="${SMOKE_BUDGET_S:-3600}" \
    BENCH_RESULTS="$LOGS/$what" bash scripts/gpu_bench.sh >"$LOGS/$what.log" 2>&1
}
# a smoke sequence's own table of its steps' wall times
step_times() { sed -n '/^Wall time per step:/,/^  total/p' "$1"; }
T0=$(now)

echo "== 1/4 landmark cache of the benchmark's source (demo, face.cache=true, default detector settings)"
# first: every run reads it (the server has no dlib), the smoke sequences of phases 2 and 4 too
t=$(now)
# Where the benchmark will look, and how many frames it needs (the demo's whole length: 100 frames)
cache_info() {
  "$PY" - <<'EOF'
import numpy as np
from omegaconf import OmegaConf
from lipsync_lab.build import LANDMARK_CACHE, build_source
from lipsync_lab.config import compose
from lipsync_lab.face.cache import cache_path

cfg = compose(["face.cache=true", "device=cpu"])
source = build_source(cfg)
path = cache_path(cfg.face.get("cache_dir") or LANDMARK_CACHE, source.content_key(),
                  OmegaConf.to_container(cfg.face.detector, resolve=True))
n = len(np.load(path)["landmarks"]) if path.is_file() else 0
faces = int((~np.isnan(np.load(path)["landmarks"]).any(axis=(1, 2))).sum()) if n else 0
print(path, n, source.n_frames, faces)
EOF
}
read -r path have need faces < <(cache_info)
if [ "$have" -ge "$need" ]; then
  echo "  already complete"
else
  tmp=$TMP/landmark_run
  # a quick tiny-model run over the whole demo: only its face stage matters (dlib runs here, once per frame)
  "$PY" -m lipsync_lab model=tiny device=cpu face.cache=true steps=1 sink=none save_crops=0 print_batches=false \
    "hydra.run.dir=$tmp" 2>&1 | grep -E "Landmark cache|Results|error" || true
  rm -rf "$tmp"  # only the landmark cache it filled is wanted
  read -r path have need faces < <(cache_info)
fi
[ "$have" -ge "$need" ] || { echo "error: $path holds $have of $need frames" >&2; exit 1; }
echo "  $path: $have frames ($faces with a face), $(du -h "$path" | cut -f1)"
phase_done "1/4 landmark cache" "$t"

echo "== 2/4 the packages the benchmark's runs import: its smoke sequence in $PY's venv, imports recorded"
t=$(now)
: >"$TMP/imports.log"
smoke derive PATH="$VENV_BIN:$PATH" PYTHONPATH="$PWD/scripts/import_log" LIPSYNC_IMPORT_LOG="$TMP/imports.log" \
  BENCH_WHEELS=0 || die "the smoke sequence failed in $PY's venv, so the runs' imports are not known: \
$(tail -1 "$LOGS/derive.log" | sed 's/^error: //') (log: $LOGS/derive.log)"
step_times "$LOGS/derive.log"
rm -rf "$LOGS/derive"  # its runs (crops, timings) were only a means; the log stays
"$PY" scripts/bundle_deps.py derive "$TMP/imports.log" "${SERVER[@]}" >"$TMP/needed.tsv"
echo "  $(sort -u "$TMP/imports.log" | wc -l) files imported; what the server lacks, closed under Requires-Dist:"
awk -F '\t' '{ printf "    %-34s %s\n", $1, $2 }' "$TMP/needed.tsv"
phase_done "2/4 the runs' imports (smoke sequence)" "$t"

echo "== 3/4 wheels for the server (CPython $SERVER_PYTHON, manylinux x86_64) into $WHL/"
t=$(now)
rm -rf "$WHL"  # one version of each: a stale wheel beside a new one would stop the install there
mkdir -p "$WHL" "$TMP/built"
while IFS=$'\t' read -r req _; do
  # a wheel built for the server's platform and Python; else (only an sdist, like antlr4's) one built here, which
  # is good there only if it is pure Python
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$SERVER_PYTHON" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHL" "$req" >"$TMP/pip.log" 2>&1; then
    "$PY" -m pip wheel -q --no-deps -w "$TMP/built" "$req" >>"$TMP/pip.log" 2>&1 \
      || die "no wheel of $req for the server, and building one here failed: $(grep -m1 ERROR "$TMP/pip.log")"
    for w in "$TMP/built"/*.whl; do
      [[ $w == *-none-any.whl ]] || die "$req has no wheel for the server, and the one built here is not pure \
Python: $(basename "$w")"
      mv "$w" "$WHL/"
    done
  fi
done <"$TMP/needed.tsv"
"$PY" scripts/bundle_deps.py check "$WHL" "${SERVER[@]}"
ls -l "$WHL" | awk 'NR > 1 {printf "  %-60s %8.1f kB\n", $9, $5 / 1024}'
echo "  bundle: $(du -sh "$WHL" | cut -f1)"
phase_done "3/4 wheels" "$t"

echo "== 4/4 check: the smoke sequence on a throw-away venv with the server's packages only, and the bundle"
t=$(now)
# from this venv's base interpreter: the pins below are this venv's versions, built for it
base=$("$PY" -c 'import os, sys; print(os.path.join(sys.base_prefix, "bin", "python3"))')
"$base" -m venv "$TMP/server"
mapfile -t pins < <("$PY" scripts/bundle_deps.py server-pins "${SERVER[@]}")
pip_ "$TMP/server/bin/python" -m pip install -q --no-deps "${pins[@]}" \
  || die "installing the server's packages into the throw-away venv failed"
echo "  throw-away venv: the ${#pins[@]} server packages installed here, at these versions: $(secs "$t" "$(now)") s"
# the bundle as it is, except that a wheel built for the server's Python only is checked as the same release built
# for this one
mkdir -p "$TMP/whl"
cp "$WHL"/*.whl "$TMP/whl/"
while IFS=$'\t' read -r file req; do
  rm "$TMP/whl/$file"
  pip_ "$TMP/server/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$TMP/whl" "$req" \
    || die "$req: no wheel for this machine's Python to stand in for $file in the check"
  echo "  $file: checked as $req built for this machine's Python"
done < <("$PY" scripts/bundle_deps.py foreign "$WHL")
t_smoke=$(now)
smoke verify PATH="$TMP/server/bin:$PATH" BENCH_WHL_DIR="$TMP/whl" BENCH_SITE="$TMP/site" \
  || die "the bundle fails on a server-like venv: $(tail -1 "$LOGS/verify.log" | sed 's/^error: //') (log: \
$LOGS/verify.log)"
step_times "$LOGS/verify.log"
rm -rf "$LOGS/verify"  # as in phase 2: a failed check keeps its runs (above, die), a passed one only its log
echo "  every step ran on the server-like venv; smoke sequence $(secs "$t_smoke" "$(now)") s (log: $LOGS/verify.log)"
phase_done "4/4 check on a server-like venv" "$t"

echo
echo "Wall time per phase:"
printf "%s\n" "${PHASES[@]}"
printf "  %-44s %8s s\n" "total" "$(secs "$T0" "$(now)")"
cat <<EOF

Ready. The bundle: $(du -sh "$WHL" | cut -f1) of wheels, $(du -sh .cache/landmarks | cut -f1) of landmarks.
On the GPU server, from the repository root (the only command; no network needed):
    bash scripts/gpu_bench.sh
carrying these ignored paths with the working tree: .whl .cache/landmarks
(the device tool: run(command="bash scripts/gpu_bench.sh", carry=[".whl", ".cache/landmarks"], timeout_s=600))
EOF
