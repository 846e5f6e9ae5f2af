"""The model's linear layers on the CPU, through oneDNN's matmul rather than PyTorch's default.

On x86 CPUs PyTorch multiplies fp32 matrices with MKL. Measured on a 2-core AMD EPYC (the
CI machines), oneDNN, which PyTorch ships as well, is faster at every gpt2-small shape: by
7-26% at the 200-800 rows of the frozen-prefix cache build and of prediction (the fp32 cache
build took 10-15% less time), and by 40-60% at the 8 rows of a training step's final block,
forward and input gradient (the step took ~9% less). oneDNN also applies GPT-2's GELU to the
product in the same pass, which takes a quarter off the MLP's first layer, in bf16 too (bf16
products already go through oneDNN: there the fusion is the gain, ~11% of an MLP).

``linear`` and ``linear_gelu`` compute what ``F.linear`` and ``F.gelu(F.linear(...),
approximate="tanh")`` compute, to float rounding (the two libraries add in different orders).
They are those calls where oneDNN is not the better choice or not there: other devices and
CPUs other than x86, dtypes other than fp32 and bf16 (bf16 only where oneDNN supports it),
builds without oneDNN, and gradients under autocast (bf16 training keeps PyTorch's
mixed-precision rules). Should oneDNN still refuse a product that PyTorch's call computes,
the process uses PyTorch's calls from then on.

A pass that multiplies by the same frozen weights many times (the frozen-prefix cache build)
can have them laid out in oneDNN's own format once, for its duration: ``packed_weights``.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

# Set when oneDNN failed at something PyTorch's own call then did: this process stops asking it.
_onednn_failed = False


@functools.cache
def _onednn_present() -> bool:
    # x86 only: where it was measured, and where PyTorch's fp32 alternative is MKL.
    return (
        platform.machine().lower() in ("x86_64", "amd64")
        and bool(torch.backends.mkldnn.is_available())
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


@functools.cache
def _onednn_bf16() -> bool:
    """bf16 products in oneDNN need AVX-512 at least; elsewhere PyTorch's autocast falls back."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(supported is not None and supported())


def onednn_available() -> bool:
    """Whether the products go through oneDNN here: an x86 CPU, a PyTorch build with oneDNN's
    fused linear kernel, and no failure of it so far."""
    return _onednn_present() and not _onednn_failed


def _guarded(fast: Callable[[], torch.Tensor], plain: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fast()``; should oneDNN refuse what PyTorch's call does (an unusual CPU or build),
    ``plain()`` from then on. A caller's own mistake (shapes, dtypes) raises from ``plain()``
    as it always would, and leaves oneDNN in use."""
    global _onednn_failed
    try:
        return fast()
    except RuntimeError:
        result = plain()
        _onednn_failed = True
        return result


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none") -> torch.Tensor:
    algorithm = "tanh" if activation == "gelu" else ""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], algorithm)


class _Linear(torch.autograd.Function):
    """fp32 ``x @ weight.T + bias`` for training, all three products in oneDNN: the forward,
    the input gradient (the transposed weight read in place) and the weight gradient
    ``grad.T @ x`` (both transposes read in place). At a training step's 8 rows that last
    product sums only 8 terms per entry and is all output; MKL's matmul writes a wide one
    slowly: 1.5 ms against oneDNN's 0.36 ms for the MLP's ``768 x 3072`` output layer, on
    the 2-core EPYC, ~1.3 ms of a 17 ms step over the final block's four layers."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = _onednn(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        grad_weight = _onednn(rows.t(), x.reshape(-1, x.shape[-1]).t(), None) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def _onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype oneDNN should multiply in, or None where PyTorch's own call is the one to make."""
    if x.device.type != "cpu" or weight.device.type != "cpu" or not onednn_available():
        return None
    if torch.is_autocast_enabled("cpu"):  # autocast multiplies in its dtype, whatever the inputs'
        dtype = torch.get_autocast_dtype("cpu")
        usable = x.dtype in (torch.float32, torch.bfloat16)
    else:
        dtype = x.dtype
        usable = weight.dtype == dtype
    if not usable or dtype not in (torch.float32, torch.bfloat16) or (dtype == torch.bfloat16 and not _onednn_bf16()):
        return None
    return dtype


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN on the CPU."""
    return _product(x, weight, bias, gelu=False)


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias), approximate="tanh")``, GPT-2's MLP input layer, in
    one oneDNN pass on the CPU where no gradient is needed (GELU is applied before the product
    is rounded, so in bf16 it is, if anything, closer to the fp32 value)."""
    return _product(x, weight, bias, gelu=True)


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    def then_gelu(y: torch.Tensor) -> torch.Tensor:
        return F.gelu(y, approximate="tanh") if gelu else y

    def plain() -> torch.Tensor:
        return then_gelu(F.linear(x, weight, bias))

    dtype = _onednn_dtype(x, weight)
    if dtype is None:
        return plain()
    if _needs_grad(x, weight, bias):
        if dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return plain()
        return then_gelu(_guarded(lambda: _Linear.apply(x, weight, bias), lambda: F.linear(x, weight, bias)))
    cast_bias = None if bias is None else bias.to(dtype)
    return _guarded(lambda: _onednn(x.to(dtype), weight.to(dtype), cast_bias, "gelu" if gelu else "none"), plain)


# --------------------------------------------------------------------------- packed weights

# Where a layer holds its packed weight while ``packed_weights`` is active (a plain attribute:
# not a parameter or buffer, so state dicts, hashes and ``.to()`` never see it).
_PACKED = "_onednn_packed_weight"

# The batch size oneDNN is told to lay a weight out for: the frozen-prefix cache build's
# batches hold 16 messages of 5-120 tokens. Any size gives the same products; hints from 128
# to 2,048 rows were equally fast on gpt2-small's shapes.
_PACKING_ROWS = 640


def packing_dtype(device: torch.device | str, autocast_dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype to pack weights in for products on ``device`` under ``autocast_dtype`` (None:
    fp32), or None where the products do not go through oneDNN."""
    dtype = autocast_dtype or torch.float32
    if torch.device(device).type != "cpu" or not onednn_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return None
    if dtype not in (torch.float32, torch.bfloat16) or (dtype == torch.bfloat16 and not _onednn_bf16()):
        return None
    return dtype


def packed_weight_of(layer: nn.Module) -> torch.Tensor | None:
    """The layer's packed weight while ``packed_weights`` is active and no gradient is needed."""
    return None if torch.is_grad_enabled() else layer.__dict__.get(_PACKED)


@contextlib.contextmanager
def packed_weights(layers: Iterable[nn.Linear], dtype: torch.dtype | None) -> Iterator[None]:
    """While inside, the products of ``layers`` (frozen ones: their weights must not change)
    read a copy of each weight cast to ``dtype`` and laid out in oneDNN's own blocked format,
    instead of oneDNN reordering (and autocast casting) the plain weight at every call.

    For a pass that multiplies by the same weights hundreds of times, the frozen-prefix cache
    build: on gpt2-small's shapes the products ran at 213-222 GFLOP/s instead of 198-207 in
    fp32, and the cache build took 4-5% less time in fp32 and 14% less in bf16, with the same
    numbers to the bit there (another CPU may get other kernels for the two layouts, and
    differ by float rounding). The copies cost the weights' size again in ``dtype`` until the block
    ends. ``dtype`` None (see ``packing_dtype``) packs nothing.
    """
    packed: list[nn.Linear] = []
    try:
        for layer in layers if dtype is not None else ():
            try:
                weight = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach().to(dtype), _PACKING_ROWS)
            except RuntimeError:  # an unusual CPU or build: the plain weights serve as before
                break
            layer.__dict__[_PACKED] = weight
            packed.append(layer)
        yield
    finally:
        for layer in packed:
            del layer.__dict__[_PACKED]
