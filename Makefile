# `make run` and `make test` set everything up on a fresh clone: nothing else is needed before them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed first, pinned: a plain requirement may pull a multi-GB CUDA build. On this project's
# CPU machines pip finds the CPU wheel on local disk; on GPU hosts the same pin takes PyPI's CUDA build.
TORCH ?= torch==2.13.0
# The local Triton server's own environment (numpy < 2; see serving/server.py).
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
# The offline validators of k8s/ and .github/workflows/ (kubectl, kubernetes-validate, checkov, actionlint).
TOOLS_VENV ?= .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed

.PHONY: run test lint bench clean serving-env

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found " + sys.version.split()[0] + "); set PYTHON=...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

$(TRITON_STAMP): serving/runtime-requirements.txt serving/model-requirements.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r serving/runtime-requirements.txt
	touch $(TRITON_STAMP)

serving-env: $(TRITON_STAMP)

$(TOOLS_STAMP): k8s/tools-requirements.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r k8s/tools-requirements.txt
	touch $(TOOLS_STAMP)

# DATA=files SCHEMA=criteo|avazu|schema.yaml run on your own log; SERVE=1 keeps Triton up at the end.
run: $(STAMP) $(TRITON_STAMP)
	$(VENV)/bin/nasrec pipeline run-local --preset demo $(if $(DATA),--data $(DATA)) $(if $(SCHEMA),--schema $(SCHEMA)) $(if $(SERVE),--serve)

test: $(STAMP) $(TRITON_STAMP) $(TOOLS_STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) -m bench.supernet_step --json runs/bench/supernet_step.json

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(TOOLS_VENV) runs
