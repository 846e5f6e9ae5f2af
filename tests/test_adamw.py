"""spamtune.adamw: torch.optim.AdamW(fused=True)'s update bit for bit, without torch.optim."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from helpers import write_tiny_data
from spamtune.adamw import AdamW
from spamtune.schedule import make_scheduler


def parameters(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in ((7, 5), (5,), (3, 4, 2))]


def set_gradients(params, step: int, skip: int | None = None) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        p.grad = None if i == skip else torch.randn(p.shape, generator=gen)


def train(make, steps: int = 6, schedule: str = "cosine", start=None):
    params = parameters()
    optimizer = make(params)
    if start is not None:
        optimizer.load_state_dict(start)
    scheduler = make_scheduler(optimizer, schedule, warmup_steps=2, total_steps=steps)
    for step in range(steps):
        set_gradients(params, step, skip=1 if step == 3 else None)  # a parameter without a gradient: left alone
        optimizer.step()
        scheduler.step()
    return params, optimizer


def ours(params):
    return AdamW(params, lr=1e-2, weight_decay=0.1)


def torchs(params):
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, fused=True)


def test_updates_the_weights_exactly_as_torchs_fused_adamw():
    mine, my_optimizer = train(ours)
    theirs, their_optimizer = train(torchs)
    assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    mine_state, their_state = my_optimizer.state_dict()["state"], their_optimizer.state_dict()["state"]
    assert mine_state.keys() == their_state.keys() == {0, 1, 2}
    for index in mine_state:
        assert mine_state[index].keys() == their_state[index].keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(mine_state[index][k], their_state[index][k]) for k in mine_state[index])
    # The parameter skipped once took one update less.
    assert mine_state[1]["step"].item() == 5 and mine_state[0]["step"].item() == 6


def train_scaled(make, steps: int = 5, infinite_at: int = 2):
    """Steps under fp16's gradient scaler, whose scale is 2**k; one step sees an infinite
    gradient, which the scaler skips (and halves its scale)."""
    params = parameters()
    optimizer = make(params)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for step in range(steps):
        set_gradients(params, step)
        scale = scaler.scale(torch.ones(()))  # what scaling a loss multiplies its gradients by
        for p in params:
            p.grad *= scale
        if step == infinite_at:
            params[0].grad[0, 0] = float("inf")
        scaler.step(optimizer)
        scaler.update()
    return params, optimizer, scaler


def test_under_a_gradient_scaler_it_updates_as_torchs_fused_adamw_given_the_scale():
    """The scaler unscales for spamtune's AdamW before its step; torch's fused AdamW takes the
    scale into its kernel. The weights, the moments and the skipped step are the same."""
    mine, my_optimizer, my_scaler = train_scaled(ours)
    theirs, their_optimizer, their_scaler = train_scaled(torchs)
    assert getattr(their_optimizer, "_step_supports_amp_scaling", False)  # the other path, really
    assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    assert my_optimizer.state_dict()["state"][0]["step"].item() == 4  # one of five skipped
    for index, state in my_optimizer.state_dict()["state"].items():
        assert all(torch.equal(state[k], their_optimizer.state_dict()["state"][index][k]) for k in state)
    assert my_scaler.get_scale() == their_scaler.get_scale() == 2.0**9


@pytest.mark.parametrize("first, then", [(torchs, ours), (ours, torchs), (ours, ours)])
def test_state_dicts_are_interchangeable_with_torchs(first, then):
    _, optimizer = train(first, steps=3)
    saved = optimizer.state_dict()
    resumed, _ = train(then, steps=3, start=saved)
    reference, _ = train(torchs, steps=3, start=train(torchs, steps=3)[1].state_dict())
    assert all(torch.equal(a, b) for a, b in zip(resumed, reference))


def test_a_state_for_other_parameters_is_refused():
    optimizer = AdamW(parameters()[:1], lr=1e-3)
    with pytest.raises(ValueError, match="does not fit"):
        optimizer.load_state_dict(train(ours, steps=1)[1].state_dict())


def test_zero_grad_clears_or_zeroes():
    params = parameters()
    optimizer = AdamW(params, lr=1e-3)
    set_gradients(params, 0)
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)


def test_a_cpu_finetune_never_loads_pytorchs_compiler(tmp_path):
    """The point of the class: a run does not pay torch._dynamo's import (a second or more);
    nor sympy's, which materialising the model with ``to_empty`` would import (0.3 s)."""
    write_tiny_data(tmp_path)
    args = [
        "finetune", "--model", str(tmp_path / "tiny.json"), "--weights", "random", "--epochs", "1",
        "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cpu", "--precision", "fp32",
    ]  # fmt: skip
    code = (
        "import atexit, sys\nfrom spamtune.cli import main\n"
        "atexit.register(lambda: print(sorted(name for name in ('torch._dynamo', 'sympy') if name in sys.modules)))\n"
        f"sys.argv = ['spamtune', *{args!r}]\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "summary.json").is_file()
    assert result.stdout.splitlines()[-1] == "[]"
