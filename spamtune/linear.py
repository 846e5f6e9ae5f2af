"""The model's linear layers on the CPU, through oneDNN's matmul rather than PyTorch's default.

On x86 CPUs PyTorch multiplies fp32 matrices with MKL. Measured on a 2-core AMD EPYC (the
CI machines), oneDNN, which PyTorch ships as well, is 7-26% faster at the gpt2-small shapes
of the frozen-prefix cache build and of prediction (200-800 rows): the fp32 cache build took
10-15% less time. oneDNN can also apply GPT-2's GELU to the product in the same pass, which
takes a quarter off the MLP's first layer, in bf16 too (bf16 products already go through
oneDNN: there the fusion is the gain, ~11% of an MLP).

``linear`` and ``linear_gelu`` compute what ``F.linear`` and ``F.gelu(F.linear(...),
approximate="tanh")`` compute, to float rounding (the two libraries add in different orders).
Where a gradient is needed they are those calls: a training step's final block runs 8 rows,
where a oneDNN forward and backward measured no faster end to end, and PyTorch's autograd
and mixed-precision rules stay as they are. They fall back to them too on other devices,
for dtypes other than fp32 and bf16, and where PyTorch was built without oneDNN.
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


def _onednn_dtype(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.dtype | None:
    """The dtype oneDNN should multiply in, or None where PyTorch's own call is the one to make."""
    if x.device.type != "cpu" or weight.device.type != "cpu" or not onednn_available():
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return None
    if torch.is_autocast_enabled("cpu"):  # autocast multiplies in its dtype, whatever the inputs'
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16) else None
    return x.dtype if x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16) else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN on the CPU."""
    dtype = _onednn_dtype(x, weight, bias)
    if dtype is None:
        return F.linear(x, weight, bias)
    return _onednn(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias), approximate="tanh")``, GPT-2's MLP input layer, in
    one oneDNN pass on the CPU (GELU is applied before the product is rounded, so in bf16 it
    is, if anything, closer to the fp32 value)."""
    dtype = _onednn_dtype(x, weight, bias)
    if dtype is None:
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")
    return _onednn(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), "gelu")
