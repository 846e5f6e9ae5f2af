"""Classifying token lists with a fine-tuned model, in length-sorted batches."""

from __future__ import annotations

import torch

from spamtune.data import pad_batch, sorted_batches
from spamtune.model import GPTModel


@torch.inference_mode()
def batched_logits(
    model: GPTModel,
    token_lists: list[list[int]],
    pooling: str,
    batch_size: int = 64,
    pad_id: int = 50256,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Class logits ``[n, num_classes]`` (fp32, on the CPU) in the order of ``token_lists``.

    Batches group messages of similar length and pad only to their own longest, then the
    results are put back in input order.
    """
    out = torch.empty(len(token_lists), model.num_classes, dtype=torch.float32)
    for idx in sorted_batches([len(t) for t in token_lists], batch_size):
        ids, lengths = pad_batch([token_lists[i] for i in idx], pad_id, device)
        out[idx] = model.classify(ids, lengths, pooling).float().cpu()
    return out
