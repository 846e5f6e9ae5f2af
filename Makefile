# Two commands set everything up on a fresh clone (see README):
#   make demo   install, then run the main job
#   make test   install with the test extras, then run the tests
#
# PyTorch is installed first, on its own, because the right build depends on the machine.
# TORCH is what pip is asked for; override it to pick a build, e.g.
#   make demo TORCH="torch --index-url https://download.pytorch.org/whl/cpu"   (CPU-only Linux box)
#   make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu126" (a given CUDA)
# The default pin is a release whose plain PyPI wheel is CUDA-enabled on Linux, MPS-enabled on
# macOS, and which this project's CI machines hold as a local CPU build.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: install install-dev demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(PIP) install -q $(TORCH)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/spamtune --help

test: install-dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
