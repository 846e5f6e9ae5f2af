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

.PHONY: install install-dev demo demo-offline test bench clean

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

# The main job: the book's pipeline end to end. download needs the network (UCI and the
# Hugging Face Hub); where there is none it stops with one clear line: use demo-offline.
SMS_FILE ?= ../shared/data/sms_spam_collection/SMSSpamCollection
SAMPLES  := "WINNER!! Claim your free prize now, text WIN to 80086" "Do you have time for lunch tomorrow?"

demo: install
	$(BIN)/spamtune download
	$(BIN)/spamtune prepare
	$(BIN)/spamtune finetune --model gpt2-small --weights pretrained --trainable last-block
	$(BIN)/spamtune evaluate
	$(BIN)/spamtune predict $(SAMPLES)

# The same pipeline from a local copy of the SMS data (SMS_FILE: the UCI zip or the
# SMSSpamCollection file) and a from-scratch tiny model: no network, a few minutes on a laptop.
demo-offline: install
	$(BIN)/spamtune download data --from $(SMS_FILE)
	$(BIN)/spamtune prepare
	$(BIN)/spamtune finetune --model tiny --weights random --trainable all --epochs 4 --lr 5e-4
	$(BIN)/spamtune evaluate
	$(BIN)/spamtune predict $(SAMPLES)

test: install-dev
	$(BIN)/python -m pytest -q

# Speed against the Hugging Face peer (needs the dev extras and the SMS file): ~10 minutes;
# then `spamtune serve` under load against `spamtune predict` on the same machine: ~10 more.
bench: install-dev
	$(BIN)/python benchmarks/bench.py --sms $(SMS_FILE) $(BENCH_ARGS)
	$(BIN)/python benchmarks/serve_bench.py --sms $(SMS_FILE) $(SERVE_BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
