"""Helpers shared by several test files: tiny labelled data and runs, and a rigged classifier.

Plain functions and constants, imported as ``from helpers import ...`` (pytest puts ``tests/`` on
``sys.path``); fixtures stay in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import torch

from spamtune import checkpoint
from spamtune.checkpoint import ClassifierConfig
from spamtune.data import Split, write_split
from spamtune.model import GPTConfig
from spamtune.options import FinetuneOptions
from spamtune.tokenizer import get_tokenizer

# --------------------------------------------------------------------------- tiny labelled data

SPAM = [
    "WINNER!! You have won a free prize, call now to claim",
    "URGENT: your mobile number won 2000 pounds, call 09061701461",
    "Free entry to win a holiday, text WIN to 80086 now",
    "Congratulations, you won a $1000 gift card, click the link",
    "Claim your cash reward today, reply YES to 85023",
    "You have been selected for a free ringtone, text TONE to 87121",
]
HAM = [
    "Are we still meeting for lunch tomorrow?",
    "I'll be home late tonight, sorry",
    "Can you pick up some milk on the way back",
    "Ok see you at the station at 6",
    "Did you finish the report for Monday?",
    "Happy birthday! Hope you have a lovely day",
]
TINY_CONFIG = {"context_length": 64, "emb_dim": 32, "n_layers": 2, "n_heads": 4}


def tiny_split(n: int, offset: int) -> Split:
    """``n`` alternating ham/spam messages, varied so that splits differ."""
    texts, labels = [], []
    for i in range(offset, offset + n):
        label = i % 2
        pool = SPAM if label else HAM
        texts.append(pool[(i // 2) % len(pool)] + ("" if i % 3 else " thanks") + (" :)" if i % 5 == 0 else ""))
        labels.append(label)
    return Split(texts, labels)


def write_tiny_data(root: Path) -> Path:
    """A data root as `spamtune prepare` leaves it: three split CSVs and labels.json, plus a tiny model config."""
    for name, n, offset in (("train", 40, 0), ("validation", 10, 40), ("test", 10, 50)):
        write_split(root / f"{name}.csv", tiny_split(n, offset))
    (root / "labels.json").write_text(json.dumps({"labels": {"ham": 0, "spam": 1}}))
    (root / "tiny.json").write_text(json.dumps(TINY_CONFIG))
    return root


def tiny_options(root: Path, **overrides) -> FinetuneOptions:
    options = FinetuneOptions(
        model=str(root / "tiny.json"), weights="random", epochs=2, lr=1e-3, data_dir=str(root), device="cpu",
        precision="fp32",
    )
    return replace(options, **overrides)


# --------------------------------------------------------------------------- a rigged run

TINY = GPTConfig(context_length=64, emb_dim=32, n_layers=2, n_heads=4)
SPAM_TOKEN = "!"
# The rigged model below gives p(spam) = sigmoid(2) to a text whose last token is "!" and
# sigmoid(-2) to every other text.
P_SPAM = 1 / (1 + math.exp(-2))
P_HAM = 1 / (1 + math.exp(2))


def write_rigged_run(run_dir: Path, pooling: str = "last-real", labels: dict[str, int] | None = None) -> Path:
    """A tiny fine-tuned run whose verdict depends only on the last token: "!" means spam.

    The blocks write nothing into the residual stream (zero output projections) and positions
    embed to zero, so the pooled state is the last token's embedding. The "!" embedding is a
    fixed zero-mean direction ``u``; every other embedding is made zero-mean and orthogonal to
    it, so after the final LayerNorm only "!" has a component along ``u``, which the spam row
    of the head reads.
    """
    labels = labels or {"ham": 0, "spam": 1}
    cfg = ClassifierConfig(model=TINY, labels=labels, pooling=pooling, max_length=TINY.context_length)
    torch.manual_seed(0)
    model = checkpoint.build_classifier(cfg)
    d = TINY.emb_dim
    u = torch.tensor([1.0, -1.0] * (d // 2))  # zero mean, unit variance: LayerNorm leaves it as is
    spam_class = labels["spam"]
    with torch.no_grad():
        for block in model.trf_blocks:
            for layer in (block.att.out_proj, block.ff.proj):
                layer.weight.zero_()
                layer.bias.zero_()
        model.pos_emb.weight.zero_()
        emb = model.tok_emb.weight
        emb -= emb.mean(dim=1, keepdim=True)
        emb -= (emb @ u)[:, None] * u / (u @ u)
        emb[get_tokenizer().encode(SPAM_TOKEN)[0]] = u
        model.out_head.weight.zero_()
        model.out_head.bias.zero_()
        model.out_head.weight[spam_class] = u * (4.0 / d)  # logit +4 along u
        model.out_head.bias[spam_class] = -2.0
    checkpoint.save_classifier(run_dir, model, cfg)
    return run_dir


def ctrl_c_at_step(monkeypatch, step: int) -> None:
    """Make training's ``step``-th optimizer step raise KeyboardInterrupt, as Ctrl-C would."""
    from spamtune import train

    real_step = train.optimizer_step
    calls = {"n": 0}

    def step_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train, "optimizer_step", step_then_ctrl_c)


def run_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a run's classifier, compact (base and delta) or full."""
    from spamtune.compact import load_run

    return dict(load_run(run_dir)[0].state_dict())


# The spamtune command in a fresh interpreter that says at exit, on stderr, whether it imported torch.
_TORCH_PROBE = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr))\n"
    "sys.argv = ['spamtune', *sys.argv[1:]]\n"
    "runpy.run_module('spamtune', run_name='__main__', alter_sys=True)\n"
)


def spamtune_without_torch(*args: str, input: bytes | None = None, status: int = 0) -> subprocess.CompletedProcess:
    """Run ``spamtune ARGS`` in a new process and check that it ended with ``status`` (success)
    without importing torch (a command that only reads folders should not pay seconds for it);
    its outcome. With ``input`` (bytes on stdin) its stdout and stderr are bytes too."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    text = input is None
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_PROBE, *args], input=input, capture_output=True, text=text, env=env, timeout=120
    )
    stderr = result.stderr if text else result.stderr.decode(errors="replace")
    assert result.returncode == status, stderr
    assert "torch imported: False" in stderr, stderr
    return result


def deny_reading(monkeypatch, *paths: Path) -> None:
    """Opening any of ``paths`` raises ``PermissionError`` in this process, as it would for a file
    the user may not read (the tests run as root, whom permissions do not stop)."""
    import builtins

    denied = {os.fspath(path) for path in paths}
    real_open = builtins.open

    real_os_open = os.open

    def guarded(real):
        def guarded_open(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and os.fspath(file) in denied:
                raise PermissionError(13, "Permission denied", os.fspath(file))
            return real(file, *args, **kwargs)

        return guarded_open

    monkeypatch.setattr(builtins, "open", guarded(real_open))
    monkeypatch.setattr(os, "open", guarded(real_os_open))  # message files are opened with os.open


def checkpointed_after_an_evaluation(run_dir: Path) -> Callable[[], bool]:
    """Whether a training run has written a checkpoint since its last evaluation: from then on it
    holds best weights. metrics.jsonl alone is too early, written just before that checkpoint (a
    stop between the two finds only the checkpoint of step 0), and the resume file alone too, as
    that step-0 checkpoint comes before any evaluation."""
    from spamtune import runs

    def ready() -> bool:
        try:
            return runs.resume_file(run_dir).stat().st_mtime_ns >= (Path(run_dir) / runs.METRICS_FILE).stat().st_mtime_ns
        except FileNotFoundError:
            return False

    return ready


def sigterm_once_ready(command: list[str], ready: Callable[[], bool], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``command`` (a training command, on one OpenMP thread), send it SIGTERM once
    ``ready()``, and return how it ended (stdout and stderr as text); it must still be running then."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + timeout
        while not ready() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(command, proc.returncode, out.decode(), err.decode())


@contextlib.contextmanager
def non_blocking_pipe(pieces: list[bytes], pause_s: float = 0.2) -> Iterator[BinaryIO]:
    """The reading end of a pipe in non-blocking mode, as another process sharing it may leave
    it (the flag is the open file's), whose writer sends ``pieces`` with a pause before each:
    it reads as empty at every pause, and only at the last piece's end is the input over."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)

    def write_with_pauses() -> None:
        with os.fdopen(write_end, "wb", buffering=0) as writer:
            for piece in pieces:
                time.sleep(pause_s)
                writer.write(piece)

    writer = threading.Thread(target=write_with_pauses)
    writer.start()
    try:
        with os.fdopen(read_end, "rb") as stream:
            yield stream
    finally:
        writer.join()
