"""LayerNorm over a training step's pooled rows, with gradients that do not depend on the threads.

PyTorch's CPU backward of ``layer_norm`` sums the scale's and shift's gradients over the rows in
per-thread parts, so one thread and two give them to different float rounding, and every later
step inherits the difference. ``norm_rows`` computes the same forward and the same input
gradient (PyTorch's own kernels), and sums the scale's and shift's gradients over the rows in one
reduction whose order does not depend on the thread count.

That is what lets a first run train with one thread fewer while the test split's cached states
are computed on the spare core (``spamtune.train``), and still give, to the bit, the numbers of
a run that trains on every thread from start to end: a second run on the kept cache, or a run
on a machine where nothing is computed behind the steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _RowLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_layer_norm_backward(grad, x, (x.shape[-1],), mean, rstd, weight, None, [True, False, False])[0]
        rows = grad.reshape(-1, grad.shape[-1])
        x_hat = ((x - mean) * rstd).reshape(rows.shape)
        grad_weight = (rows * x_hat).sum(0) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


def norm_rows(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``; while a CPU step trains its scale and shift in fp32, with the backward above."""
    trains = torch.is_grad_enabled() and norm.weight is not None and norm.weight.requires_grad and norm.bias is not None
    if trains and x.device.type == "cpu" and x.dtype == norm.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
        return _RowLayerNorm.apply(x, norm.weight, norm.bias, norm.eps)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
