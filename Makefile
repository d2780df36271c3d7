# Two commands on a fresh machine:  `make train` (the default run)  and  `make test`.
# Both set up what they need first and skip what is already done.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A pinned torch is installed before the package: a bare `torch` requirement would pull a
# multi-GB CUDA build where a CPU one is wanted. Override with e.g. TORCH_PIN='torch==2.5.1'.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.cnnlab-installed

.PHONY: setup data train test lint format docs clean gpu-carry

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_PIN)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,export,tune]"
	touch $(STAMP)

data: $(STAMP)
	bash scripts/ensure-fashion-mnist.sh $(PY)

train: setup data
	$(VENV)/bin/cnnlab train

# The git-ignored .gpu/ that travels to a lent GPU machine: wheels of what its python lacks
# and Fashion-MNIST (docs/gpu.md); benchmarks/gpu_first_run.sh reads it there.
gpu-carry: setup data
	bash benchmarks/gpu_carry.sh $(PY)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The suite includes `mkdocs build --strict` of the docs site (tests/test_docs_site.py).
test: setup data lint
	$(VENV)/bin/pytest -q

# Serve the docs site at http://127.0.0.1:8000, rebuilt on every edit.
docs: setup
	$(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
