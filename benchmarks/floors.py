"""How far a recipe sits from what this machine could do at best: its compute floor.

``matmul_peak_gflops`` measures the machine's plain matrix-multiply rate; ``recipe_flops``
counts the arithmetic the book's recipe cannot avoid with spamtune's shortcuts: one pass of
the frozen blocks over each distinct message's tokens, then the trainable last block at the
pooled token only (forward and backward for every training example of every epoch, forward
for every evaluation). Their ratio is a lower bound on the recipe's time; the recipe's wall
time over it says how much is left to gain. ``copy_bandwidth_gbs`` gives the second limit:
a training step of a last-block run moves the optimizer's state through memory, which no
amount of arithmetic speed shortens.
"""

from __future__ import annotations

import time

import torch

from spamtune.linear import linear
from spamtune.model import GPTConfig


def matmul_peak_gflops(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 5) -> float:
    """The best rate of a square matrix product over a few sizes, in GFLOP/s, by PyTorch's
    own matmul or by oneDNN's (what ``spamtune.linear`` uses; faster for fp32 on AMD CPUs)."""
    products = [torch.matmul, linear]  # linear(a, b) is a @ b.T: the same work
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for product in products:
            product(a, b)  # the first call picks and prepares the kernel
            for _ in range(repeats):
                start = time.perf_counter()
                product(a, b)
                best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def copy_bandwidth_gbs(megabytes: int = 400, repeats: int = 5) -> float:
    """Memory bandwidth of a large copy (bytes read plus bytes written per second), in GB/s."""
    src = torch.empty(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def block_flops(cfg: GPTConfig, length: int) -> float:
    """A full causal block over one sequence: the 12 d^2 weights per token, and attention's
    scores and mix over the earlier positions (about L^2 / 2 pairs, 2 d each, twice)."""
    d = cfg.emb_dim
    return 2 * 12 * d * d * length + 2 * d * length * (length + 1)


def pooled_block_flops(cfg: GPTConfig, length: int) -> float:
    """The last block at one position with keys and values folded into the query (see
    ``CausalSelfAttention.forward_at``): q, W_k^T q, W_v, the output projection and the MLP for
    one token (22 d^2), plus scores and mix over the sequence for every head."""
    d = cfg.emb_dim
    return 2 * 11 * d * d + 4 * cfg.n_heads * d * length


def recipe_flops(cfg: GPTConfig, splits: dict[str, list[list[int]]], epochs: int) -> dict:
    """FLOPs of the last-block recipe over ``splits`` (train, validation, test token lists):
    the frozen prefix once over distinct messages; the pooled block 3x (forward, backward) per
    training example per epoch, plus a forward per example of train and validation at every
    epoch's evaluation, and of test and validation once more (test score, calibration)."""
    distinct = {tuple(t) for tokens in splits.values() for t in tokens}
    frozen = (cfg.n_layers - 1) * sum(block_flops(cfg, len(t)) for t in distinct)

    def pooled(name: str) -> float:
        return sum(pooled_block_flops(cfg, len(t)) for t in splits[name])

    trainable = epochs * (3 * pooled("train") + pooled("train") + pooled("validation")) + pooled("test") + pooled("validation")
    return {"frozen": frozen, "trainable": trainable, "distinct_tokens": sum(map(len, distinct))}


def optimizer_bytes(trainable_params: int, steps: int) -> float:
    """Bytes a training step cannot avoid moving for fp32 AdamW: each weight read in the
    forward and backward passes, its gradient written, and the update reading weight,
    gradient and both moments and writing weight and moments: 10 fp32 numbers per parameter."""
    return 10 * 4 * trainable_params * steps
