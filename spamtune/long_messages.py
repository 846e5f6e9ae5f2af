"""Classifying messages longer than the model's window: ``--long head|head-tail|chunks``.

A run reads at most ``max_length`` tokens (1,024 for GPT-2, 256 for ``tiny``), and mail often
runs longer. ``windows`` turns one message's token ids into what the model reads:

- ``head``: the first ``max_length`` tokens (what ``SpamClassifier.predict`` does);
- ``head-tail``: the first half and the last half of the window (a signature, an unsubscribe
  footer or a payload at the end is seen too);
- ``chunks``: overlapping windows over the whole message, each classified, combined by the
  maximum spam probability (one spammy stretch makes the message spam).

``predict_long`` applies one of them to a ``SpamClassifier``'s texts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from spamtune.infer import Prediction, SpamClassifier
from spamtune.options import DEFAULT_LONG, LONG_MODES
from spamtune.tokenizer import encode_texts

# Past this many windows a message's windows are spread evenly over it instead of overlapping,
# so one huge message cannot cost more than this many forward passes.
MAX_WINDOWS = 16


def windows(ids: Sequence[int], max_length: int, mode: str = DEFAULT_LONG, overlap: int | None = None) -> list[list[int]]:
    """The token windows the model classifies for one message (each at most ``max_length`` long).

    ``chunks`` windows overlap by ``overlap`` tokens (default a quarter of the window) and the
    last one ends at the message's end; beyond ``MAX_WINDOWS`` windows they are spaced evenly
    from the start to the end of the message instead.
    """
    if mode not in LONG_MODES:
        raise ValueError(f"unknown long-message mode {mode!r}; use one of {', '.join(LONG_MODES)}")
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    ids = list(ids)
    n = len(ids)
    if n <= max_length:
        return [ids]
    if mode == "head":
        return [ids[:max_length]]
    if mode == "head-tail":
        half = max_length // 2
        return [ids[:half] + ids[n - (max_length - half) :]]
    overlap = max_length // 4 if overlap is None else overlap
    if not 0 <= overlap < max_length:
        raise ValueError(f"overlap must be between 0 and max_length - 1, got {overlap}")
    stride = max_length - overlap
    starts = list(range(0, n - max_length, stride)) + [n - max_length]
    if len(starts) > MAX_WINDOWS:
        last = n - max_length
        starts = [round(i * last / (MAX_WINDOWS - 1)) for i in range(MAX_WINDOWS)]
    return [ids[s : s + max_length] for s in starts]


def long_logits(
    token_lists: Sequence[Sequence[int]],
    max_length: int,
    mode: str | None,
    positive_index: int,
    logits_of: Callable[[list[list[int]]], torch.Tensor],
) -> torch.Tensor:
    """Class logits ``[n, num_classes]`` for messages of any length, read the ``mode`` way.

    ``logits_of`` computes the logits of a list of token windows (each at most ``max_length``);
    every message takes the row of its window with the highest positive-class probability.
    """
    groups = [windows(ids, max_length, mode or DEFAULT_LONG) for ids in token_lists]
    logits = logits_of([window for group in groups for window in group])
    if all(len(group) == 1 for group in groups):
        return logits
    positive = torch.softmax(logits.float(), dim=1)[:, positive_index]
    chosen, start = [], 0
    for group in groups:
        chosen.append(start + int(positive[start : start + len(group)].argmax()))
        start += len(group)
    return logits[chosen]


def predict_long(classifier: SpamClassifier, texts: Sequence[str], mode: str | None = None) -> list[Prediction]:
    """``classifier.predict(texts)`` with long texts read the ``mode`` way (see ``windows``).

    Each text's windows are classified in the classifier's batches; a text takes the probabilities
    of its window with the highest spam probability, and its label follows as in ``predict``.
    """
    texts = list(texts)
    positive = classifier.labels.index(classifier.positive_label)
    logits = long_logits(encode_texts(texts), classifier.max_length, mode, positive, classifier.token_logits)
    return classifier.predictions(texts, torch.softmax(logits, dim=1))
