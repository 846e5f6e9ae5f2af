"""What an explanation is: the scored words of a message and the window of it they come from.

The data alone, without torch: ``spamtune.explain`` computes explanations, and a client of a
running service (``predict --server --explain``) rebuilds them from the service's answer
(``Explanation.from_answer``) and prints them with the same code as local ``predict``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

DEFAULT_TOP_K = 5
# Spans towards spam, and as many towards ham, that ``predict --explain`` prints of a message,
# and that the service sends with each verdict it explains.
SHOWN_SPANS = 3


@dataclass(frozen=True)
class Span:
    """A word (or run of words) of the message, ``text == message[start:end]``, with its push
    towards spam (positive ``score``) or ham (negative), in calibrated log-odds."""

    text: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict:
        return {"text": self.text, "start": self.start, "end": self.end, "score": round(self.score, 6)}


@dataclass(frozen=True)
class WindowPart:
    """A stretch of the message that the explained window reads: characters ``[start, end)`` of the
    message, tokens ``[token_start, token_end)`` of its encoding (an empty message is read as one
    end-of-text token: characters 0-0, tokens 0-1)."""

    start: int
    end: int
    token_start: int
    token_end: int

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "token_start": self.token_start, "token_end": self.token_end}


@dataclass(frozen=True)
class Explanation:
    text: str
    p_spam: float  # calibrated: the verdict's, which is that of the window explained
    words: tuple[Span, ...]  # every scored span, in text order
    # What the model read to decide: one part (the message, its head, the deciding chunk), or
    # two for head-tail (its head and its tail), in text order.
    window: tuple[WindowPart, ...] = ()

    @property
    def reads_whole_text(self) -> bool:
        """Whether the window explained reaches every character of the message."""
        return len(self.window) == 1 and self.window[0].start == 0 and self.window[0].end == len(self.text)

    def window_list(self) -> list[dict]:
        """The JSON form of ``window``: ``[{"start", "end", "token_start", "token_end"}, ...]``."""
        return [part.to_dict() for part in self.window]

    def towards_spam(self, k: int = DEFAULT_TOP_K) -> list[Span]:
        """The ``k`` spans with the largest positive scores, strongest first."""
        return sorted((w for w in self.words if w.score > 0), key=lambda w: -w.score)[: _count(k)]

    def towards_ham(self, k: int = DEFAULT_TOP_K) -> list[Span]:
        """The ``k`` spans with the most negative scores, strongest first."""
        return sorted((w for w in self.words if w.score < 0), key=lambda w: w.score)[: _count(k)]

    def top(self, k: int = DEFAULT_TOP_K) -> list[dict]:
        """The JSON form: the top spans towards spam, then those towards ham (negative scores)."""
        return [span.to_dict() for span in self.towards_spam(k) + self.towards_ham(k)]

    @classmethod
    def from_answer(cls, text: str, p_spam: float, spans: Any, window: Any) -> Explanation:
        """The explanation of ``text`` that a service sent as JSON (``top``'s and
        ``window_list``'s forms), holding the spans it sent. A ValueError if those are not spans
        of ``text`` (each ``text[start:end]``, none overlapping) and a window within it: the
        offsets cut the text that is printed."""
        if not isinstance(spans, list) or not isinstance(window, list):
            raise ValueError("explanation and window must be lists")
        words = sorted((_span_of(text, item) for item in spans), key=lambda span: span.start)
        if any(a.end > b.start for a, b in zip(words, words[1:])):
            raise ValueError("overlapping spans")
        return cls(text, p_spam, tuple(words), tuple(_window_part_of(text, item) for item in window))


def _count(k: int) -> int:
    """``k`` as a count of spans: a negative one is a ValueError, where a slice ``[:k]`` would
    silently drop the weakest spans (and a float or a string a TypeError, as ``operator.index``)."""
    k = operator.index(k)
    if k < 0:
        raise ValueError(f"k must be at least 0, got {k}")
    return k


def _offset(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"not an offset: {value!r}")
    return value


def _span_of(text: str, item: Any) -> Span:
    if not isinstance(item, dict):
        raise ValueError("a span must be an object")
    start, end, score = _offset(item.get("start")), _offset(item.get("end")), item.get("score")
    if not start < end <= len(text) or item.get("text") != text[start:end]:
        raise ValueError(f"not a span of the text: {item!r}")
    if type(score) not in (int, float) or not math.isfinite(score):
        raise ValueError(f"not a score: {score!r}")
    return Span(text[start:end], start, end, float(score))


def _window_part_of(text: str, item: Any) -> WindowPart:
    if not isinstance(item, dict):
        raise ValueError("a window part must be an object")
    part = WindowPart(*(_offset(item.get(key)) for key in ("start", "end", "token_start", "token_end")))
    if not part.start <= part.end <= len(text) or part.token_start > part.token_end:
        raise ValueError(f"not a window of the text: {item!r}")
    return part
