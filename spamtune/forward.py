"""The forward pass and the loss, one of each, shared by training, ``evaluate`` and
``SpamClassifier``.

``predict_logits`` is the only evaluation path: eval mode for the duration, no autograd, the
run's precision, batches of similar length padded only to their own longest (or to the
training width for ``last`` pooling), repeated messages computed once, results in input order.
``classification_loss`` is the only loss: the training step and every evaluation use it, so a
weighted loss, say, changes in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from spamtune.data import sorted_batches
from spamtune.device import Precision
from spamtune.examples import Batch, Examples
from spamtune.model import GPTModel

# Evaluation batches are sorted by length and padded only to their own longest, so a large
# batch costs little padding; ``spamtune evaluate`` uses the same size by default.
EVAL_BATCH_SIZE = 64


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of class logits against class indices, computed in fp32; ``weight``
    (one per class) makes it the weighted mean (``--class-weights balanced``)."""
    return F.cross_entropy(logits.float(), labels, weight=weight)


def class_weight_tensor(mode: str, labels: list[int], num_classes: int) -> torch.Tensor | None:
    """``balanced``: ``n / (classes * n_c)`` per class (scikit-learn's "balanced"), from the
    training labels; a class absent from them gets weight 1. ``none``: no weights."""
    if mode == "none":
        return None
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).double()
    weights = torch.where(counts > 0, len(labels) / (num_classes * counts.clamp_min(1)), torch.ones_like(counts))
    return weights.float()


def calc_loss_batch(
    model: GPTModel, batch: Batch, pooling: str, last_query_only: bool = True, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """The loss of one batch: the whole forward pass of a training step."""
    return classification_loss(batch.logits(model, pooling, last_query_only), batch.labels, weight)


@contextlib.contextmanager
def eval_mode(model: GPTModel) -> Iterator[GPTModel]:
    """The model in eval mode (no dropout) for a while, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.inference_mode()
def predict_logits(
    model: GPTModel, examples: Examples, pooling: str, *, precision: Precision,
    batch_size: int = EVAL_BATCH_SIZE, pad_to: int | None = None, last_query_only: bool = True,
) -> torch.Tensor:  # fmt: skip
    """Class logits ``[n, num_classes]`` (fp32, on the CPU) in the order of ``examples``.

    A message that occurs more than once is computed once (the SMS splits, mailboxes and logs
    repeat themselves). ``last_query_only=False`` runs the plain full forward, the reference
    the shortcuts are checked against.
    """
    slots: dict[tuple[int, ...], int] = {}  # distinct message -> its slot
    first: list[int] = []  # slot -> the first example holding that message
    slot_of = []
    for i, tokens in enumerate(examples.tokens):
        slot = slots.setdefault(tuple(tokens), len(first))
        if slot == len(first):
            first.append(i)
        slot_of.append(slot)
    out = torch.empty(len(first), model.num_classes, dtype=torch.float32)
    with eval_mode(model), precision.autocast():
        for idx in sorted_batches([len(examples.tokens[i]) for i in first], batch_size):
            batch = examples.batch([first[i] for i in idx], precision.device, pad_to)
            out[idx] = batch.logits(model, pooling, last_query_only).float().cpu()
    return out[slot_of]


def evaluate_examples(model: GPTModel, examples: Examples, pooling: str, **forward) -> tuple[float, float]:
    """(mean loss, accuracy) over every example of a labelled split; ``forward`` holds the
    keyword arguments of ``predict_logits`` (precision, batch size, padding, shortcuts)."""
    logits = predict_logits(model, examples, pooling, **forward)
    labels = torch.tensor(examples.labels, dtype=torch.long)
    correct = int((logits.argmax(dim=1) == labels).sum())
    return classification_loss(logits, labels).item(), correct / len(labels)
