"""The forward pass and the loss, one of each, shared by training, ``evaluate`` and
``SpamClassifier``.

``predict_logits`` is the only evaluation path: eval mode for the duration, no autograd, the
run's precision, batches of similar length padded only to their own longest (on a CPU cut
where padding would cost more than another call; for ``last`` pooling, full batches padded to
the training width), repeated messages computed once, results in input order.
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

# What one forward call costs on a CPU beyond its tokens, counted in token positions: mostly
# reading every weight once. Measured on gpt2-small (bf16, 2 cores), a call of one
# short message costs what 16-24 more tokens in a larger batch cost. Batches are cut where
# padding would cost more than that (``sorted_batches``). A GPU pays little for padding, so
# there batches stay full; so does a split whose frozen prefix is cached, where only the last
# block runs: its per-token work (a norm and two attention products) is small beside the
# products at the pooled position, and full batches of 64 evaluated the SMS train and
# validation splits in 0.98 s against 1.31-1.48 s cut this way (5 epochs' evaluations).
CPU_CALL_COST_TOKENS = 24

# On a GPU, batches end before they hold this many token positions (rows times the longest),
# so that large batches of short messages do not become large batches of long mail: 256 rows
# of 1,024 tokens would hold ~1.6 GB of gpt2-small's MLP activations at once (bf16).
GPU_BATCH_TOKENS = 65536

# ``few_shapes``: batch widths rounded up to a multiple of this many tokens, and row counts to
# ``few_row_counts``. The CPU matmul kernels (oneDNN, for bf16) keep memory for every shape they
# meet; a long-running process that met every width times every row count kept growing.
FEW_SHAPES_WIDTH_MULTIPLE = 8


def few_row_counts(batch_size: int) -> set[int]:
    """The batch sizes allowed with ``few_shapes``: powers of two and one and a half times them
    (1, 2, 3, 4, 6, 8, 12, 16, 24, ...) up to ``batch_size``, and ``batch_size``."""
    counts, power = {batch_size}, 1
    while power <= batch_size:
        counts |= {n for n in (power, power * 3 // 2) if n <= batch_size}
        power *= 2
    return counts


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
    few_shapes: bool = False,
) -> torch.Tensor:  # fmt: skip
    """Class logits ``[n, num_classes]`` (fp32, on the CPU) in the order of ``examples``.

    A message that occurs more than once is computed once (the SMS splits, mailboxes and logs
    repeat themselves). ``last_query_only=False`` runs the plain full forward, the reference
    the shortcuts are checked against. ``few_shapes`` (on a CPU) rounds each batch's width up to
    a multiple of 8 (within the context length) and its rows to ``few_row_counts``: the answers
    stay the same, since padding follows the real tokens, and a long-running process meets a
    few dozen batch shapes rather than hundreds (see ``FEW_SHAPES_WIDTH_MULTIPLE``), for ~4%
    more compute.
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
    widths = [len(examples.tokens[i]) for i in first]
    cut_for_padding = pad_to is None and precision.device.type == "cpu" and examples.cache is None
    call_cost = CPU_CALL_COST_TOKENS if cut_for_padding else None
    few_shapes = few_shapes and call_cost is not None
    if few_shapes:
        multiple = FEW_SHAPES_WIDTH_MULTIPLE
        widths = [min(-(-w // multiple) * multiple, model.cfg.context_length) for w in widths]
    rows = few_row_counts(batch_size) if few_shapes else None
    with eval_mode(model), precision.forward_context():
        max_tokens = GPU_BATCH_TOKENS if precision.device.type != "cpu" else None
        if max_tokens and pad_to:  # every batch is as wide as pad_to
            batch_size = max(1, min(batch_size, max_tokens // pad_to))
        for idx in sorted_batches(widths, batch_size, call_cost, rows, max_tokens):
            width = max(widths[i] for i in idx) if few_shapes else pad_to
            batch = examples.batch([first[i] for i in idx], precision.device, width)
            out[idx] = batch.logits(model, pooling, last_query_only).float().cpu()
    return out[slot_of]


def evaluate_examples(model: GPTModel, examples: Examples, pooling: str, positive: int | None = None, **forward) -> tuple[float, float]:
    """(mean loss, accuracy) over every example of a labelled split; ``forward`` holds the
    keyword arguments of ``predict_logits`` (precision, batch size, padding, shortcuts).
    ``positive``: see ``decided_classes``."""
    logits = predict_logits(model, examples, pooling, **forward)
    labels = torch.tensor(examples.labels, dtype=torch.long)
    correct = int((decided_classes(logits, positive) == labels).sum())
    return classification_loss(logits, labels).item(), correct / len(labels)


def decided_classes(logits: torch.Tensor, positive: int | None = None, threshold: float = 0.5) -> torch.Tensor:
    """Each row's class: the most probable one. With two classes and the positive class's index
    given, that class when its probability is at least ``threshold``, as ``predict`` and
    ``evaluate`` decide: at 0.5 a tie (equal logits, common in bf16) is then the positive class,
    where the argmax would take the first, and a run's accuracy would differ from what
    ``evaluate`` reports for it."""
    if positive is None or logits.shape[1] != 2:
        return logits.argmax(dim=1)
    # float64, as calibration chooses the threshold: in float32 every probability within 6e-8 of
    # 1 is 1.0, so a threshold set between two such validation scores would flag both.
    is_positive = torch.softmax(logits.double(), dim=1)[:, positive] >= threshold
    return torch.where(is_positive, positive, 1 - positive)
