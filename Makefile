# Two commands do all the set-up on a fresh machine (Python >= 3.10 and make are all they need):
#   make demo   — create .venv, install, stream the embedded demo through the pipeline on this machine
#   make test   — create .venv, install, run the test suite (unit, integration, notebooks)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU := torch==2.13.0

.PHONY: install demo test lab clean gpu-bundle

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel, only where no torch is present (a GPU user's own CUDA torch in the venv is kept).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m lipsync_lab $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

lab: install  # JupyterLab + TensorBoard's profiler plugin for the notebooks and traces
	$(PY) -m pip install -q -e ".[notebooks,profiling]"
	$(VENV)/bin/jupyter lab notebooks

gpu-bundle: install  # .whl/ + .cache/landmarks for scripts/gpu_bench.sh on a bare, offline GPU server (README)
	PY=$(PY) bash scripts/gpu_bundle.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache
