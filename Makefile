# `make test` and `make demo` set up their own .venv on a fresh machine (Python 3.11 + pip).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch on this machine's index; override for a CUDA build, e.g. TORCH_SPEC="torch==2.11.0".
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PYTEST_WORKERS ?= 2

.PHONY: venv test test-gpu demo bench lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q triton
	$(PY) -m pip install -q -e ".[dev,spaces,bench]"
	touch $@

test: venv
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not gpu" tests

# On an NVIDIA machine: the kernels in bf16/fp16 at real sizes.
test-gpu: venv
	$(PY) -m pytest -q -m gpu tests

demo: venv
	$(VENV)/bin/hfzoo demo

bench: venv
	$(PY) benchmarks/run_all.py

lint: venv
	$(VENV)/bin/ruff check hfzoo tests benchmarks conversions spaces

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
