"""Shared fixtures: tiny GPT-2-shaped models written in the Hugging Face layout, and paths."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
SHARED_SMS_FILE = REPO.parent / "shared" / "data" / "sms_spam_collection" / "SMSSpamCollection"
BUNDLED_SMS_FILE = REPO / "data" / "sms_spam_collection" / "SMSSpamCollection"


@pytest.fixture(autouse=True)
def _private_default_data_root(tmp_path_factory, monkeypatch):
    """No test reads or writes the real user data folder: the default data root is a fresh
    temporary folder and $SPAMTUNE_HOME is unset unless a test sets it."""
    from spamtune import paths

    root = tmp_path_factory.mktemp("user-data")
    monkeypatch.setattr(paths, "default_data_root", lambda: root)
    monkeypatch.delenv(paths.ENV_HOME, raising=False)


def pytest_configure(config):
    """Ctrl-C as a terminal delivers it, whoever started the suite: a shell without job control
    starts a background job (`pytest ... &`, nohup) with SIGINT ignored, which its children
    inherit, and the tests that send a real SIGINT would then wait for an interrupt that never
    comes."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _ctrl_c_handled_as_before():
    """A command that finishes ignores Ctrl-C from then on (``process_end.work_done``); run in
    this process, that would outlast its test."""
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def sms_file() -> Path:
    """The real SMS Spam Collection: ../shared's copy where there is one, else the copy bundled
    in the repository's data/, so that these tests run on a fresh clone too."""
    for candidate in (SHARED_SMS_FILE, BUNDLED_SMS_FILE):
        if candidate.is_file():
            return candidate
    pytest.skip(f"real SMS Spam Collection found neither at {SHARED_SMS_FILE} nor at {BUNDLED_SMS_FILE}")


@pytest.fixture
def rows_forwarded(monkeypatch):
    """The rows of every batch the model classifies from now on (padding rows included), in order."""
    from spamtune.model import GPTModel

    rows = []
    classify = GPTModel.classify

    def counted(self, input_ids, *args, **kwargs):
        rows.append(len(input_ids))
        return classify(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(GPTModel, "classify", counted)
    return rows


def hf_gpt2_state_dict(emb_dim=64, n_layers=2, vocab=50257, context=128, seed=0, prefix="", buffers=False):
    """Random weights under Hugging Face GPT-2 key names and Conv1D ([in, out]) shapes."""
    g = torch.Generator().manual_seed(seed)
    d = emb_dim

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    sd = {"wte.weight": rnd(vocab, d), "wpe.weight": rnd(context, d), "ln_f.weight": 1 + rnd(d), "ln_f.bias": rnd(d)}
    for i in range(n_layers):
        sd.update({
            f"h.{i}.ln_1.weight": 1 + rnd(d), f"h.{i}.ln_1.bias": rnd(d),
            f"h.{i}.attn.c_attn.weight": rnd(d, 3 * d), f"h.{i}.attn.c_attn.bias": rnd(3 * d),
            f"h.{i}.attn.c_proj.weight": rnd(d, d), f"h.{i}.attn.c_proj.bias": rnd(d),
            f"h.{i}.ln_2.weight": 1 + rnd(d), f"h.{i}.ln_2.bias": rnd(d),
            f"h.{i}.mlp.c_fc.weight": rnd(d, 4 * d), f"h.{i}.mlp.c_fc.bias": rnd(4 * d),
            f"h.{i}.mlp.c_proj.weight": rnd(4 * d, d), f"h.{i}.mlp.c_proj.bias": rnd(d),
        })  # fmt: skip
        if buffers:  # what older exports (and openai-community/gpt2) also hold
            sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, context, context))
            sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return {prefix + k: v for k, v in sd.items()}


def write_hf_gpt2(path: Path, **kwargs) -> Path:
    """A GPT-2-shaped ``model.safetensors`` as the Hugging Face hub serves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(hf_gpt2_state_dict(**kwargs), str(path), metadata={"format": "pt"})
    return path


@pytest.fixture
def tiny_hf_file(tmp_path) -> Path:
    return write_hf_gpt2(tmp_path / "hf" / "model.safetensors", buffers=True)
