# Set-up and checks. `make demo` and `make test` each build the environment first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch lies on this disk; pin it before anything else asks for torch.
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-gpu lint bench bench-micro clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[dev]" $(TORCH_PIN)
	touch $(STAMP)

demo: venv
	$(PY) -m distilbert.demo

test: venv
	$(PY) -m pytest -q -x --durations=15

test-gpu: venv
	$(PY) -m pytest -q -m gpu

lint: venv
	$(PY) -m ruff check distilbert tests benchmarks

# The full suite (every workload and provider, on CPU); results in benchmarks/results/.
bench: venv
	$(PY) -m distilbert bench

# Micro-benchmarks of the dispatch ops and one encoder forward (pytest-benchmark).
bench-micro: venv
	$(PY) -m pytest benchmarks/test_micro.py --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info
