"""Classifying messages longer than the model's window: ``--long head|head-tail|chunks``.

A run reads at most ``max_length`` tokens (1,024 for GPT-2, 256 for ``tiny``), and mail often
runs longer. ``windows`` turns one message's token ids into what the model reads:

- ``head``: the first ``max_length`` tokens (what ``SpamClassifier.predict`` does);
- ``head-tail``: the first half and the last half of the window (a signature, an unsubscribe
  footer or a payload at the end is seen too);
- ``chunks``: overlapping windows over the whole message, each classified, combined by the
  maximum spam probability (one spammy stretch makes the message spam).

``predict_long`` applies one of them to a ``SpamClassifier``'s texts; ``deciding_windows`` says
which window gave each verdict (what ``SpamClassifier.explain`` explains).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from spamtune.options import DEFAULT_LONG, LONG_MODES
from spamtune.tokenizer import encode_texts

if TYPE_CHECKING:  # spamtune.infer imports this module (through spamtune.explain)
    from spamtune.infer import Prediction, SpamClassifier

# A window as the token ranges ``[start, end)`` of the message that it reads, in order: one range,
# or two for head-tail (its head and its tail).
TokenRanges = tuple[tuple[int, int], ...]

# Past this many windows a message's windows are spread evenly over it instead of overlapping,
# so one huge message cannot cost more than this many forward passes.
MAX_WINDOWS = 16


def check_mode(mode: str) -> str:
    """``mode`` if it is one of ``LONG_MODES``, else a ValueError that lists them."""
    if mode not in LONG_MODES:
        raise ValueError(f"unknown long-message mode {mode!r}; use one of {', '.join(LONG_MODES)}")
    return mode


def window_ranges(n: int, max_length: int, mode: str = DEFAULT_LONG, overlap: int | None = None) -> list[TokenRanges]:
    """The windows the model classifies for a message of ``n`` tokens, as the token ranges each
    reads (together at most ``max_length`` tokens); ``windows`` gives their token ids.

    ``chunks`` windows overlap by ``overlap`` tokens (default a quarter of the window) and the
    last one ends at the message's end; beyond ``MAX_WINDOWS`` windows they are spaced evenly
    from the start to the end of the message instead.
    """
    check_mode(mode)
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    if n <= max_length:
        return [((0, n),)]
    if mode == "head":
        return [((0, max_length),)]
    if mode == "head-tail":
        half = max_length // 2
        tail = (n - (max_length - half), n)
        return [((0, half), tail) if half else (tail,)]
    overlap = max_length // 4 if overlap is None else overlap
    if not 0 <= overlap < max_length:
        raise ValueError(f"overlap must be between 0 and max_length - 1, got {overlap}")
    stride = max_length - overlap
    starts = list(range(0, n - max_length, stride)) + [n - max_length]
    if len(starts) > MAX_WINDOWS:
        last = n - max_length
        starts = [round(i * last / (MAX_WINDOWS - 1)) for i in range(MAX_WINDOWS)]
    return [((s, s + max_length),) for s in starts]


def window_ids(ids: Sequence[int], ranges: TokenRanges) -> list[int]:
    """The token ids a window reads: its ranges of ``ids``, in order."""
    return [token for start, end in ranges for token in ids[start:end]]


def windows(ids: Sequence[int], max_length: int, mode: str = DEFAULT_LONG, overlap: int | None = None) -> list[list[int]]:
    """The token windows the model classifies for one message (each at most ``max_length`` long);
    see ``window_ranges``."""
    ids = list(ids)
    return [window_ids(ids, ranges) for ranges in window_ranges(len(ids), max_length, mode, overlap)]


def deciding_windows(
    token_lists: Sequence[Sequence[int]],
    max_length: int,
    mode: str | None,
    positive_index: int,
    logits_of: Callable[[list[list[int]]], torch.Tensor],
) -> tuple[torch.Tensor, list[TokenRanges]]:
    """The class logits ``[n, num_classes]`` that decide each message's verdict, read the ``mode``
    way, and the token ranges of the window they are the logits of.

    ``logits_of`` computes the logits of a list of token windows (each at most ``max_length``);
    every message takes the row of its window with the highest positive-class probability (the
    first of equal ones).
    """
    groups = [window_ranges(len(ids), max_length, mode or DEFAULT_LONG) for ids in token_lists]
    logits = logits_of([window_ids(ids, ranges) for ids, group in zip(token_lists, groups) for ranges in group])
    if all(len(group) == 1 for group in groups):
        return logits, [group[0] for group in groups]
    positive = torch.softmax(logits.float(), dim=1)[:, positive_index]
    chosen, deciding, start = [], [], 0
    for group in groups:
        best = int(positive[start : start + len(group)].argmax())
        chosen.append(start + best)
        deciding.append(group[best])
        start += len(group)
    return logits[chosen], deciding


def predict_long(classifier: SpamClassifier, texts: str | Iterable[str], mode: str | None = None) -> list[Prediction]:
    """``classifier.predict(texts)`` with long texts read the ``mode`` way (see ``windows``), as a
    list (a string is one text, as ``predict_explained`` reads it).

    Each text's windows are classified in the classifier's batches; a text takes the probabilities
    of its window with the highest spam probability, and its label follows as in ``predict``.
    """
    from spamtune.infer import text_list  # spamtune.infer imports this module

    # A string taken as an iterable was one message per character, and an int item failed deep
    # in the tokenizer; the texts are checked as predict checks them.
    texts = text_list(texts)[0]
    positive = classifier.labels.index(classifier.positive_label)
    logits, _ = deciding_windows(encode_texts(texts), classifier.max_length, mode, positive, classifier.token_logits)
    return classifier.predictions(texts, torch.softmax(logits, dim=1))
