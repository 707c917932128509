# Two commands on a fresh machine: `make demo` and `make test` (and `make gpu-check` on a GPU machine). Each builds .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; a bare `torch` would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test test-all gpu-check bench bench-full clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e ".[all,test]"
	touch $@

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install -e ".[all,bench]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) recipes/demo.py

# Every feature keeps a case here; the long matrices (every engine x variant, 4-process runs) are
# marked slow and run by test-all.
test: setup
	$(PY) -m pytest -ra -m "not slow"

test-all: setup
	$(PY) -m pytest -ra

# With CUDA: the CUDA-marked tests, the speed benchmarks on the GPU, tests/gpu/*.py and, with 2+ GPUs,
# a two-process Accelerate run, then one summary table (scripts/gpu_check.py). Without a GPU: says so, exits 0.
gpu-check: $(VENV)/.bench-installed
	$(PY) scripts/gpu_check.py

# Quick mode (about 12 minutes on 2 cores); tables and plots go to outputs/
bench: $(VENV)/.bench-installed
	$(PY) benchmarks/step_speed.py --quick
	$(PY) benchmarks/quant_speed.py --quick
	$(PY) benchmarks/memory.py --quick
	$(PY) benchmarks/convergence.py --quick
	$(PY) benchmarks/batch_size.py --quick
	$(PY) benchmarks/distributed.py --quick
	$(PY) benchmarks/low_precision.py --quick

# Full mode, for publication (an hour or more on 2 cores).
bench-full: $(VENV)/.bench-installed
	$(PY) benchmarks/step_speed.py
	$(PY) benchmarks/quant_speed.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/convergence.py
	$(PY) benchmarks/batch_size.py
	$(PY) benchmarks/distributed.py
	$(PY) benchmarks/low_precision.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache outputs
