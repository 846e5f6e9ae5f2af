"""spamtune.linear: the model's linear layers through oneDNN on the CPU, and where they are not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spamtune.linear as linear_module
from spamtune.linear import linear, linear_gelu, onednn_available
from spamtune.model import GPTConfig, GPTModel

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


@pytest.fixture
def calls(monkeypatch):
    """Counts the products that went to oneDNN."""
    seen: list[str] = []
    real = linear_module._onednn

    def counting(x, weight, bias, activation="none"):
        seen.append(activation)
        return real(x, weight, bias, activation)

    monkeypatch.setattr(linear_module, "_onednn", counting)
    return seen


def tensors(rows_shape=(3, 5), dim_in=48, dim_out=80, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*rows_shape, dim_in, generator=gen)
    w = torch.randn(dim_out, dim_in, generator=gen) * 0.1
    b = torch.randn(dim_out, generator=gen) * 0.1 if bias else None
    return x, w, b


@needs_onednn
@pytest.mark.parametrize("rows_shape", [(7,), (3, 5), (0,)])
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_products_match_pytorchs_and_go_through_onednn(calls, rows_shape, bias):
    x, w, b = tensors(rows_shape, bias=bias)
    with torch.no_grad():
        got, got_gelu = linear(x, w, b), linear_gelu(x, w, b)
    want = F.linear(x, w, b)
    assert got.shape == got_gelu.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_gelu, F.gelu(want, approximate="tanh"), rtol=1e-5, atol=1e-5)
    assert calls == ["none", "gelu"]


@needs_onednn
def test_under_bf16_autocast_the_product_is_bf16_like_autocasts(calls):
    x, w, b = tensors()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_gelu = linear(x, w, b), linear_gelu(x, w, b)
        want = F.linear(x, w, b)
    assert got.dtype == got_gelu.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    # The fused GELU acts on the unrounded product: close to the fp32 value, within bf16's step.
    exact = F.gelu(F.linear(x, w, b), approximate="tanh")
    torch.testing.assert_close(got_gelu.float(), exact, rtol=1e-2, atol=1e-2)
    assert calls == ["none", "gelu"]


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_training_gets_pytorchs_gradients_through_onednn(calls, bias):
    def grads(fn):
        x, w, b = tensors(bias=bias)
        leaves = [t.requires_grad_(True) for t in (x, w, b) if t is not None]
        fn(x, w[:50], None if b is None else b[:50]).square().sum().backward()  # a view, as the qkv split is
        return [t.grad for t in leaves]

    ours = grads(linear_gelu)
    assert calls == ["none", "none", "none"]  # the forward, the input and the weight gradient
    theirs = grads(lambda x, w, b: F.gelu(F.linear(x, w, b), approximate="tanh"))
    assert len(ours) == len(theirs) == (3 if bias else 2)
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not ours[1][50:].any()  # rows outside the view get nothing


def test_gradients_under_autocast_are_pytorchs_own_call_exactly(calls):
    x, w, b = tensors()
    w.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_gelu(x, w, b).float().square().sum()
    got.backward()
    grad = w.grad.clone()
    w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.gelu(F.linear(x, w, b), approximate="tanh").float().square().sum()
    want.backward()
    assert torch.equal(got, want) and torch.equal(grad, w.grad)
    assert calls == []


def test_without_onednn_or_off_the_cpu_dtypes_it_falls_back_exactly(calls, monkeypatch):
    x, w, b = tensors()
    with torch.no_grad():
        assert torch.equal(linear(x.double(), w.double(), b.double()), F.linear(x.double(), w.double(), b.double()))
        with pytest.raises(RuntimeError):  # mixed dtypes outside autocast: PyTorch's own refusal
            linear(x, w.bfloat16(), b)
        monkeypatch.setattr(linear_module, "onednn_available", lambda: False)
        assert torch.equal(linear(x, w, b), F.linear(x, w, b))
        assert torch.equal(linear_gelu(x, w, b), F.gelu(F.linear(x, w, b), approximate="tanh"))
    assert calls == []


@needs_onednn
def test_a_models_logits_stay_those_of_pytorchs_kernels(monkeypatch):
    cfg = GPTConfig(vocab_size=300, context_length=32, emb_dim=64, n_layers=3, n_heads=4, drop_rate=0.0)
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    ids = torch.randint(0, 300, (4, 12))
    with torch.no_grad():
        fast = model(ids)
        monkeypatch.setattr(linear_module, "onednn_available", lambda: False)
        plain = model(ids)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_should_onednn_refuse_a_product_pytorchs_calls_take_over(monkeypatch):
    monkeypatch.setattr(linear_module, "_onednn_failed", False)  # restored after the test
    x, w, b = tensors()
    with torch.no_grad():
        with pytest.raises(RuntimeError):  # the caller's own mistake: raised, oneDNN kept
            linear(x, w[:, :10], b)
        assert onednn_available()

        def refuse(*args, **kwargs):
            raise RuntimeError("could not create a primitive descriptor")

        monkeypatch.setattr(linear_module, "_onednn", refuse)
        assert torch.equal(linear_gelu(x, w, b), F.gelu(F.linear(x, w, b), approximate="tanh"))
        assert not onednn_available()
        assert torch.equal(linear(x, w, b), F.linear(x, w, b))  # no longer asked
