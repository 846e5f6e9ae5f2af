"""The final block's attention at one query per sequence, with its backward written out.

``CausalSelfAttention.forward_at`` folds the key and value projections into the query side, so
the three slices of the fused ``qkv`` weight are used at three places. Left to autograd, each
slice's gradient is computed on its own and the split's backward then copies them into one
``[3 * emb_dim, emb_dim]`` tensor: 0.7 ms of a 17 ms training step of the book's recipe on two
cores, for a 7 MB copy. Here each slice's gradient is written straight into its rows of that
tensor. The forward is the same sequence of operations as before; the backward is the same
algebra in another order, so gradients agree to float rounding (a float64 ``gradcheck`` in the
tests checks the derivation). Without dropout only: the attention weights then sum to one,
which the value bias's gradient relies on; with dropout the autograd path is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from spamtune.linear import linear


def attend_at(h, weight, bias, index, heads: int, dropout: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """The folded attention's forward, before the value bias: ``y [batch, heads, head_dim]``,
    then what its backward reads (``x_last, q, q_in_x, weights, mixed``). ``dropout`` acts on
    the attention weights; the caller adds the value bias, weighted by their sum."""
    b, t, d = h.shape
    head_dim = d // heads
    w_q, w_k, w_v = weight.split(d)  # each [out, in], heads are contiguous rows
    b_q = bias[:d] if bias is not None else None
    rows = torch.arange(b, device=h.device)
    x_last = h[rows, index]
    q = linear(x_last, w_q, b_q).view(b, heads, head_dim)
    q_in_x = torch.einsum("bhe,hed->bhd", q, w_k.view(heads, head_dim, d))  # W_k^T q per head
    scores = torch.bmm(q_in_x, h.transpose(1, 2)) / math.sqrt(head_dim)  # [b, heads, t]
    hidden = torch.arange(t, device=h.device)[None, :] > index[:, None]
    weights = scores.masked_fill(hidden[:, None, :], float("-inf")).softmax(dim=-1)
    if dropout is not None:
        weights = dropout(weights)
    mixed = torch.bmm(weights.to(h.dtype), h)  # sum_t a_t x_t per head: [b, heads, emb_dim]
    y = torch.einsum("bhd,hed->bhe", mixed, w_v.view(heads, head_dim, d))
    return y, x_last, q, q_in_x, weights, mixed


class FoldedAttention(torch.autograd.Function):
    """``y [batch, emb_dim]``: attention at position ``index[i]`` of each sequence of ``h``
    (``[batch, tokens, emb_dim]``, the block's normalised input), before the output projection."""

    @staticmethod
    def forward(ctx, h, weight, bias, index, heads: int):
        b, _, d = h.shape
        y, x_last, q, q_in_x, weights, mixed = attend_at(h, weight, bias, index, heads)
        if bias is not None:  # the weights sum to one
            y = y + bias[2 * d :].view(heads, d // heads)
        ctx.heads = heads
        ctx.has_bias = bias is not None
        ctx.save_for_backward(h, weight, index, x_last, q, q_in_x, weights, mixed)
        return y.reshape(b, d)

    @staticmethod
    def backward(ctx, grad_y):
        h, weight, index, x_last, q, q_in_x, weights, mixed = ctx.saved_tensors
        b, t, d = h.shape
        heads = ctx.heads
        head_dim = d // heads
        w_q, w_k, w_v = weight.split(d)
        grad_y = grad_y.reshape(b, heads, head_dim)
        grad_weight = torch.empty_like(weight)
        g_q, g_k, g_v = grad_weight.split(d)  # views: each product writes its own rows
        # y = sum_d mixed W_v: W_v's rows of head h get sum_b grad_y[b, h, e] mixed[b, h, :]
        torch.bmm(grad_y.permute(1, 2, 0), mixed.transpose(0, 1), out=g_v.view(heads, head_dim, d))
        d_mixed = torch.einsum("bhe,hed->bhd", grad_y, w_v.view(heads, head_dim, d))
        d_weights = torch.bmm(d_mixed, h.transpose(1, 2))  # [b, heads, t]
        d_h = torch.bmm(weights.transpose(1, 2), d_mixed)  # through mixed = a h: [b, t, d]
        # softmax: ds = a (da - sum_t a da); masked positions have a = 0 and get nothing
        d_scores = weights * (d_weights - (weights * d_weights).sum(-1, keepdim=True))
        d_scores = d_scores / math.sqrt(head_dim)
        d_q_in_x = torch.bmm(d_scores, h)  # [b, heads, d]
        d_h += torch.bmm(d_scores.transpose(1, 2), q_in_x)  # through the scores' h
        torch.bmm(q.permute(1, 2, 0), d_q_in_x.transpose(0, 1), out=g_k.view(heads, head_dim, d))
        d_q = torch.einsum("bhd,hed->bhe", d_q_in_x, w_k.view(heads, head_dim, d)).reshape(b, d)
        torch.mm(d_q.t(), x_last, out=g_q)
        rows = torch.arange(b, device=h.device)
        d_h[rows, index] += d_q @ w_q
        grad_bias = None
        if ctx.has_bias:
            # The key bias shifts every score of a row alike, which softmax ignores: no gradient.
            grad_bias = torch.cat([d_q.sum(0), torch.zeros(d, dtype=d_q.dtype, device=d_q.device), grad_y.sum(0).reshape(d)])
        return d_h, grad_weight, grad_bias, None, None
