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
They are those calls where oneDNN is not the better choice or not there: other devices,
dtypes other than fp32 and bf16, builds without oneDNN, and gradients under autocast (bf16
training keeps PyTorch's mixed-precision rules).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's fused linear kernel (x86 and Arm builds do)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none") -> torch.Tensor:
    algorithm = "tanh" if activation == "gelu" else ""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], algorithm)


class _Linear(torch.autograd.Function):
    """fp32 ``x @ weight.T + bias`` for training: oneDNN's forward and input gradient (the
    transposed weight read in place), and the weight gradient as an ordinary matmul, which is
    as fast as oneDNN's at these shapes."""

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
        grad_weight = rows.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def _onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype oneDNN should multiply in, or None where PyTorch's own call is the one to make."""
    if x.device.type != "cpu" or weight.device.type != "cpu" or not onednn_available():
        return None
    if torch.is_autocast_enabled("cpu"):  # autocast multiplies in its dtype, whatever the inputs'
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16) else None
    return x.dtype if x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16) else None


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN on the CPU."""
    dtype = _onednn_dtype(x, weight)
    if dtype is None:
        return F.linear(x, weight, bias)
    if _needs_grad(x, weight, bias):
        if dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return F.linear(x, weight, bias)
        return _Linear.apply(x, weight, bias)
    return _onednn(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias), approximate="tanh")``, GPT-2's MLP input layer, in
    one oneDNN pass on the CPU where no gradient is needed (GELU is applied before the product
    is rounded, so in bf16 it is, if anything, closer to the fp32 value)."""
    dtype = _onednn_dtype(x, weight)
    if dtype is None or _needs_grad(x, weight, bias):
        return F.gelu(linear(x, weight, bias), approximate="tanh")
    return _onednn(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), "gelu")
