"""What the service runs for each kind of request: the same reading as ``predict`` and ``filter``.

Texts go through ``predict_long`` in ``predict``'s mode for lines of text (a long text keeps its
first tokens); the text of a mail message (``spamtune.mail.extract``) goes through it in
``filter``'s mode (``DEFAULT_LONG``), and its headers are the ones ``filter`` adds, built by the
filter's own ``Verdict``. So the service answers exactly what the two commands would.
Texts to explain get ``predict``'s prediction and ``predict --explain``'s explanation; mail
messages to explain, ``predict --mail --explain``'s (of the window read in ``filter``'s mode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spamtune.explanation import SHOWN_SPANS
from spamtune.long_messages import predict_long
from spamtune.mail import extract
from spamtune.options import DEFAULT_LONG, TEXT_LONG
from spamtune.mail_filter import Verdict

__all__ = ["extract", "mail_headers", "predictors"]


def predictors(classifier: Any) -> dict[str, Callable[[list[str]], list]]:
    """``{"text": ..., "mail": ..., "explain": ..., "mail-explain": ...}``: texts -> predictions
    (for the two that explain, ``(prediction, explanation spans, window explained)``), for the
    dynamic batcher."""

    def explained(texts: list[str], long: str) -> list[tuple[Any, list[dict], list[dict]]]:
        predictions, explanations = classifier.predict_explained(texts, long)
        return [(p, e.top(SHOWN_SPANS), e.window_list()) for p, e in zip(predictions, explanations)]

    return {
        "text": lambda texts: predict_long(classifier, texts, TEXT_LONG),
        "mail": lambda texts: predict_long(classifier, texts, DEFAULT_LONG),
        "explain": lambda texts: explained(texts, TEXT_LONG),
        "mail-explain": lambda texts: explained(texts, DEFAULT_LONG),
    }


def mail_headers(is_spam: bool, p_spam: float, threshold: float, run: str) -> dict[str, str]:
    """The header fields ``spamtune filter`` adds for this verdict, by name."""
    lines = Verdict(is_spam, p_spam, threshold, run).header_lines(b"\n").decode("ascii").splitlines()
    return dict(line.split(": ", 1) for line in lines)
