#!/usr/bin/env bash
# Prepare the GPU benchmark (scripts/gpu_bench.sh) for a bare, offline GPU server; run here, with network (`make
# gpu-bundle`). Makes the two ignored folders that travel with the working tree:
#   .whl/             wheels of the packages the server lacks, for CPython 3.12 manylinux x86_64, pinned to this
#                     venv's versions (the server's torch, transformers, numpy, ... are used as they are)
#   .cache/landmarks  the embedded demo's per-frame landmarks (face.cache=true), so the server needs no dlib
# and ends by printing the device command and its carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WHL=.whl
[ -x "$PY" ] || { echo "error: $PY not found: run 'make install' first (or set PY=...)" >&2; exit 1; }

# The packages the server lacks, closed under Requires-Dist (checked below): diffusers needs importlib_metadata,
# which needs lazy-importer (zipp is there); hydra-core and omegaconf need antlr4 (packaging, pyyaml are there).
BINARY=(diffusers hydra-core omegaconf importlib_metadata lazy-importer)
SDIST=(antlr4-python3-runtime)  # only an sdist on the registry: built into a (pure) wheel here

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

version() { "$PY" -m pip show "$1" 2>/dev/null | awk '/^Version:/ {print $2}'; }
# pip, less the warnings of a local pip config's missing index folders
pip_() { "$PY" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

echo "== 1/2 wheels for the server (CPython 3.12, manylinux x86_64) into $WHL/"
rm -rf "$WHL"  # one version of each: a stale wheel beside a new one would stop the install there
mkdir -p "$WHL"
for name in "${BINARY[@]}" "${SDIST[@]}"; do
  v=$(version "$name")
  [ -n "$v" ] || { echo "error: $name is not installed in $PY's environment" >&2; exit 1; }
  if [[ " ${SDIST[*]} " == *" $name "* ]]; then
    pip_ wheel -q --no-deps -w "$WHL" "$name==$v"
  else
    pip_ download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHL" "$name==$v"
  fi
done

# Every Requires-Dist (extras skipped, markers evaluated for the server's Python) must be in the bundle or on the
# server; a version the server is known to have must satisfy the bound.
"$PY" - "$WHL" "$SERVER_PACKAGES" "$SERVER_VERSIONS" <<'EOF'
import re, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement

norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
whl_dir, server, versions = Path(sys.argv[1]), set(map(norm, sys.argv[2].split())), dict(
    (norm(k), v) for k, v in (kv.split("=") for kv in sys.argv[3].split()))
env = dict(python_version="3.12", python_full_version="3.12.3", sys_platform="linux", platform_system="Linux",
           platform_machine="x86_64", os_name="posix", implementation_name="cpython", extra="")
wheels = sorted(whl_dir.glob("*.whl"))
bundle = {norm(w.name.split("-")[0]): w.name.split("-")[1] for w in wheels}
if len(bundle) != len(wheels):
    sys.exit(f"error: two versions of one package in {whl_dir}: {[w.name for w in wheels]}")
problems = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
    for text in reqs:
        r = Requirement(text)
        if r.marker is not None and ("extra" in str(r.marker) or not r.marker.evaluate(env)):
            continue
        name = norm(r.name)
        have = bundle.get(name) or versions.get(name)
        where = "bundle" if name in bundle else "server" if name in server else None
        if where is None:
            problems.append(f"{w.name}: needs {text}, neither bundled nor on the server")
        elif have and r.specifier and not r.specifier.contains(have, prereleases=True):
            problems.append(f"{w.name}: needs {text}, the {where} has {have}")
        print(f"  {w.name.split('-')[0]:<24} needs {text:<36} -> {where}{' ' + have if have else ''}")
if problems:
    sys.exit("error: the bundle is incomplete:\n  " + "\n  ".join(problems))
print(f"  all requirements met ({len(wheels)} wheels)")
EOF
ls -l "$WHL" | awk 'NR > 1 {printf "  %-60s %8.1f kB\n", $9, $5 / 1024}'
echo "  bundle: $(du -sh "$WHL" | cut -f1)"

echo "== 2/2 landmark cache of the benchmark's source (demo, face.cache=true, default detector settings)"
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
  tmp=$(mktemp -d)
  # a quick tiny-model run over the whole demo: only its face stage matters (dlib runs here, once per frame)
  "$PY" -m lipsync_lab model=tiny device=cpu face.cache=true steps=1 sink=none save_crops=0 print_batches=false \
    "hydra.run.dir=$tmp" 2>&1 | grep -E "Landmark cache|Results|error" || true
  rm -rf "$tmp"
  read -r path have need faces < <(cache_info)
fi
[ "$have" -ge "$need" ] || { echo "error: $path holds $have of $need frames" >&2; exit 1; }
echo "  $path: $have frames ($faces with a face), $(du -h "$path" | cut -f1)"

cat <<EOF

Ready. The bundle: $(du -sh "$WHL" | cut -f1) of wheels, $(du -sh .cache/landmarks | cut -f1) of landmarks.
On the GPU server, from the repository root (the only command; no network needed):
    bash scripts/gpu_bench.sh
carrying these ignored paths with the working tree: .whl .cache/landmarks
(the device tool: run(command="bash scripts/gpu_bench.sh", carry=[".whl", ".cache/landmarks"], timeout_s=600))
EOF
