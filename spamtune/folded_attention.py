"""The final block's attention at one query per sequence, with its backward written out.

``CausalSelfAttention.forward_at`` folds the key and value projections into the query side, so
the three slices of the fused ``qkv`` weight are used at three places. Left to autograd, each
slice's gradient is computed on its own and the split's backward then copies them into one
``[3 * emb_dim, emb_dim]`` tensor: 0.7 ms of a 17 ms training step of the book's recipe on two
cores, for a 7 MB copy. Here each slice's gradient is written straight into its rows of that
tensor.

The block's first LayerNorm is folded in the same way: its input reaches the attention
normalised but not yet scaled and shifted (``x̂``), and the scale ``γ`` and shift ``β`` act on
the per-head vectors instead of every position. A score ``u . (γ x̂_t + β)`` is ``(u γ) . x̂_t``
plus a term the same for every ``t``, which softmax ignores; the mixed value ``sum_t a_t (γ x̂_t
+ β)`` is ``γ sum_t a_t x̂_t + β``. So neither the forward nor the backward touches a tensor as
large as the sequence for ``γ`` and ``β``: their gradients come from the per-head vectors, and
when the input needs none (the frozen prefix's states, the book's recipe) the backward does two
products with the sequence instead of four. The backward is the same algebra in another order,
so gradients agree to float rounding (a float64 ``gradcheck`` in the tests checks the
derivation). Without dropout only: the attention weights then sum to one, which the value bias's
and ``β``'s gradients rely on; with dropout the autograd path is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from spamtune.linear import linear


def attend_at(x_hat, gamma, beta, weight, bias, index, heads: int, dropout: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """The folded attention's forward for the normalised input ``x̂`` (``[batch, tokens,
    emb_dim]``) scaled by ``gamma`` and shifted by ``beta``, before the value bias: ``y [batch,
    heads, head_dim]``, then what its backward reads (``h_last, q, q_in_x, weights, mixed_x``).
    ``dropout`` acts on the attention weights; the caller adds the value bias, weighted by their sum."""
    b, t, d = x_hat.shape
    head_dim = d // heads
    w_q, w_k, w_v = weight.split(d)  # each [out, in], heads are contiguous rows
    b_q = bias[:d] if bias is not None else None
    rows = torch.arange(b, device=x_hat.device)
    h_last = torch.addcmul(beta, gamma, x_hat[rows, index])  # the block's normalised input there
    q = linear(h_last, w_q, b_q).view(b, heads, head_dim)
    q_in_x = torch.einsum("bhe,hed->bhd", q, w_k.view(heads, head_dim, d))  # W_k^T q per head
    scores = torch.bmm(q_in_x * gamma, x_hat.transpose(1, 2)) / math.sqrt(head_dim)  # [b, heads, t]
    hidden = torch.arange(t, device=x_hat.device)[None, :] > index[:, None]
    weights = scores.masked_fill(hidden[:, None, :], float("-inf")).softmax(dim=-1)
    if dropout is not None:
        weights = dropout(weights)
    mixed_x = torch.bmm(weights.to(x_hat.dtype), x_hat)  # sum_t a_t x̂_t per head: [b, heads, emb_dim]
    shift = beta if dropout is None else weights.sum(-1, keepdim=True) * beta  # dropout: the weights need not sum to one
    mixed = torch.addcmul(shift, gamma, mixed_x)
    y = torch.einsum("bhd,hed->bhe", mixed, w_v.view(heads, head_dim, d))
    return y, h_last, q, q_in_x, weights, mixed_x


class FoldedAttention(torch.autograd.Function):
    """``y [batch, emb_dim]``: attention at position ``index[i]`` of each sequence of ``γ x̂ + β``
    (``x_hat [batch, tokens, emb_dim]``, the block's input normalised; ``gamma`` and ``beta`` its
    first LayerNorm's weight and bias), before the output projection."""

    @staticmethod
    def forward(ctx, x_hat, gamma, beta, weight, bias, index, heads: int):
        b, _, d = x_hat.shape
        y, h_last, q, q_in_x, weights, mixed_x = attend_at(x_hat, gamma, beta, weight, bias, index, heads)
        if bias is not None:  # the weights sum to one
            y = y + bias[2 * d :].view(heads, d // heads)
        ctx.heads = heads
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x_hat, gamma, beta, weight, index, h_last, q, q_in_x, weights, mixed_x)
        return y.reshape(b, d)

    @staticmethod
    def backward(ctx, grad_y):
        x_hat, gamma, beta, weight, index, h_last, q, q_in_x, weights, mixed_x = ctx.saved_tensors
        b, t, d = x_hat.shape
        heads = ctx.heads
        head_dim = d // heads
        w_q, w_k, w_v = weight.split(d)
        grad_y = grad_y.reshape(b, heads, head_dim)
        grad_weight = torch.empty_like(weight)
        g_q, g_k, g_v = grad_weight.split(d)  # views: each product writes its own rows
        # y = sum_d mixed W_v: W_v's rows of head h get sum_b grad_y[b, h, e] mixed[b, h, :]
        mixed = torch.addcmul(beta, gamma, mixed_x)
        torch.bmm(grad_y.permute(1, 2, 0), mixed.transpose(0, 1), out=g_v.view(heads, head_dim, d))
        d_mixed = torch.einsum("bhe,hed->bhd", grad_y, w_v.view(heads, head_dim, d))
        # mixed = γ mixed_x + β
        d_gamma = (d_mixed * mixed_x).sum((0, 1))
        d_beta = d_mixed.sum((0, 1))
        d_mixed_x = d_mixed * gamma
        # a_t's part of mixed is γ x̂_t + β; β adds the same to every t, which softmax's backward drops
        d_weights = torch.bmm(d_mixed_x, x_hat.transpose(1, 2))  # [b, heads, t]
        # softmax: ds = a (da - sum_t a da); masked positions have a = 0 and get nothing
        d_scores = weights * (d_weights - (weights * d_weights).sum(-1, keepdim=True))
        d_scores = d_scores / math.sqrt(head_dim)
        # scores = (q_in_x γ) . x̂_t
        d_scaled = torch.bmm(d_scores, x_hat)  # [b, heads, d]
        d_gamma += (d_scaled * q_in_x).sum((0, 1))
        d_q_in_x = d_scaled * gamma
        torch.bmm(q.permute(1, 2, 0), d_q_in_x.transpose(0, 1), out=g_k.view(heads, head_dim, d))
        d_q = torch.einsum("bhd,hed->bhe", d_q_in_x, w_k.view(heads, head_dim, d)).reshape(b, d)
        torch.mm(d_q.t(), h_last, out=g_q)
        # h_last = γ x̂_last + β
        rows = torch.arange(b, device=x_hat.device)
        d_h_last = linear(d_q, w_q.t())  # oneDNN: MKL's product here changes its rounding with the thread count
        x_last = x_hat[rows, index]
        d_gamma += (d_h_last * x_last).sum(0)
        d_beta += d_h_last.sum(0)
        d_x_hat = None
        if ctx.needs_input_grad[0]:  # a block before this one is trained too
            d_x_hat = torch.bmm(weights.transpose(1, 2), d_mixed_x)  # through mixed_x = a x̂
            d_x_hat += torch.bmm(d_scores.transpose(1, 2), q_in_x * gamma)  # through the scores
            d_x_hat[rows, index] += d_h_last * gamma
        grad_bias = None
        if ctx.has_bias:
            # The key bias shifts every score of a row alike, which softmax ignores: no gradient.
            grad_bias = torch.cat([d_q.sum(0), torch.zeros(d, dtype=d_q.dtype, device=d_q.device), grad_y.sum(0).reshape(d)])
        return d_x_hat, d_gamma, d_beta, grad_weight, grad_bias, None, None
