# Two commands set everything up on a fresh clone (see README), with or without a network:
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

.PHONY: install install-dev demo demo-pretrained demo-offline test bench clean

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

# Every target works in the repository's data/ folder: the bundled SMS Spam Collection is
# there, and the splits, downloads and runs go there too (git ignores them). Set SPAMTUNE_HOME
# to use another data root; to reach these runs by hand, use the same (see README).
export SPAMTUNE_HOME ?= $(CURDIR)/data

# SMS_FILE: a copy of the SMS data to import instead (the UCI zip or the SMSSpamCollection
# file); empty means the copy bundled in data/.
SMS_FILE ?=
SMS_SOURCE = $(if $(SMS_FILE),--from "$(SMS_FILE)",--bundled)
SAMPLES  := "WINNER!! Claim your free prize now, text WIN to 80086" "Do you have time for lunch tomorrow?"
# Seconds to wait for the Hugging Face Hub before running the offline demo instead.
HUB_TIMEOUT ?= 5

# The main job. Where the Hugging Face Hub answers, the book's pipeline end to end: pretrained
# gpt2-small, last block fine-tuned. Where it does not (no network, a firewall, HF_HUB_OFFLINE),
# one line says so and the offline pipeline runs instead. The Hub is asked once, with a short
# timeout, rather than after the hub client's half minute of retries.
demo: install
	@if $(BIN)/python -c 'import sys; from spamtune.download import hub_unreachable; why = hub_unreachable(timeout=$(HUB_TIMEOUT)); why and print(f"demo: {why}; running the offline demo instead (bundled data, from-scratch tiny model)", file=sys.stderr); sys.exit(1 if why else 0)'; \
	then $(MAKE) --no-print-directory demo-pretrained; \
	else $(MAKE) --no-print-directory demo-offline; fi

demo-pretrained: install
	$(BIN)/spamtune download data $(if $(SMS_FILE),--from "$(SMS_FILE)")
	$(BIN)/spamtune download model gpt2-small
	$(BIN)/spamtune prepare
	$(BIN)/spamtune finetune --model gpt2-small --weights pretrained --trainable last-block
	$(BIN)/spamtune evaluate
	$(BIN)/spamtune predict $(SAMPLES)

# The same pipeline without any network: the bundled SMS data (or SMS_FILE) and a
# from-scratch tiny model; a few minutes on a laptop.
demo-offline: install
	$(BIN)/spamtune download data $(SMS_SOURCE)
	$(BIN)/spamtune prepare
	$(BIN)/spamtune finetune --model tiny --weights random --trainable all --epochs 4 --lr 5e-4 --pooling mean
	$(BIN)/spamtune evaluate
	$(BIN)/spamtune predict $(SAMPLES)

# Tests make their own data roots; one exported here must not leak into them.
test: install-dev
	env -u SPAMTUNE_HOME $(BIN)/python -m pytest -q

# Speed against the Hugging Face peer (needs the dev extras; the bundled SMS file unless
# SMS_FILE says otherwise): ~10 minutes; then `spamtune serve` under load against
# `spamtune predict` on the same machine: ~10 more.
bench: install-dev
	$(BIN)/python benchmarks/bench.py $(if $(SMS_FILE),--sms "$(SMS_FILE)") $(BENCH_ARGS)
	$(BIN)/python benchmarks/serve_bench.py $(if $(SMS_FILE),--sms "$(SMS_FILE)") $(SERVE_BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
