# Two commands do all the set-up on a fresh machine (Python >= 3.10 and make are all they need):
#   make demo   — create .venv, install, stream the embedded demo through the pipeline on this machine
#   make test   — create .venv, install, run the test suite (unit, integration, notebooks)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU := torch==2.13.0
# the Jupyter kernel of the project's venv: the notebooks' metadata and their tests name it
KERNEL := lipsync_lab
KERNEL_SPEC := $(VENV)/share/jupyter/kernels/$(KERNEL)/kernel.json
LAB_PORT ?= 8888
BOARD_PORT ?= 6006

.PHONY: install demo test lab board clean gpu-bundle

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel, only where no torch is present (a GPU user's own CUDA torch in the venv is kept).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

$(KERNEL_SPEC): $(VENV)/.installed
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "lipsync_lab (.venv)" >/dev/null

install: $(VENV)/.installed $(KERNEL_SPEC)

demo: install
	$(PY) -m lipsync_lab $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

lab: install  # JupyterLab (+ TensorBoard's profiler plugin) on this machine only, the notebooks on the venv's kernel
	$(PY) -m pip install -q -e ".[notebooks,profiling]"
	@echo "JupyterLab: http://127.0.0.1:$(LAB_PORT)/lab (the next free port if taken: Jupyter prints the exact URL" \
		"with its token below); kernel '$(KERNEL)' = $(PY). From another machine: ssh -L $(LAB_PORT):127.0.0.1:$(LAB_PORT)"
	$(VENV)/bin/jupyter lab notebooks --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT)

board: install  # TensorBoard's PyTorch Profiler tab over results/ (online only: Google Charts); offline: notebook 05
	$(PY) -c "import tensorboard, torch_tb_profiler" 2>/dev/null || $(PY) -m pip install -q -e ".[profiling]"
	mkdir -p results
	@echo "TensorBoard: http://127.0.0.1:$(BOARD_PORT)/#pytorch_profiler (runs: results/**/trace)." \
		"From another machine: ssh -L $(BOARD_PORT):127.0.0.1:$(BOARD_PORT)"
	@echo "Needs the internet: the profiler tab loads Google Charts (https://www.gstatic.com/charts/loader.js) and" \
		"stays blank offline. Offline, the route is notebooks/05_profiler_review.ipynb (timeline, operators, CUDA" \
		"kernels and idle time, trace diff; README: Profiling)."
	$(VENV)/bin/tensorboard --logdir results --host 127.0.0.1 --port $(BOARD_PORT)

gpu-bundle: install  # .whl/ + .cache/landmarks for scripts/gpu_bench.sh on a bare, offline GPU server (README)
	PY=$(PY) bash scripts/gpu_bundle.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache
