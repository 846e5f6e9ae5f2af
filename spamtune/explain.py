"""Why a message was flagged: the words that pushed the decision towards spam or towards ham.

**Method: occlusion over words.** A word's score is the calibrated spam log-odds of the whole
message minus that of the message without the word's tokens:
``log-odds(message) - log-odds(message without word)``. Positive: the word pushed towards spam.
It was chosen because it is

* faithful by construction: the score *is* what removing the word does to this model's
  decision, in the units the threshold is set in. Gradient x input, the one-backward-pass
  alternative, is blind to part of what a GPT-2 classifier reads: the final LayerNorm makes the
  output invariant to the scale of the residual stream, so ``grad . input`` cancels the
  contribution carried by a token's embedding scale (a model whose verdict hangs on one token
  can give that token a zero gradient x input score);
* cheap for messages: the variants (one per word) go through the model as one batch of
  forward passes, in inference mode, with the same fast path, batching and precision as
  prediction. Long texts are occluded in at most ``MAX_UNITS`` runs of adjacent words, so the
  cost is bounded by ``MAX_UNITS + 1`` forward passes whatever the length;
* checked: ``deletion_test`` removes each message's top-k spam words at once, and k random
  words, and compares the fall of the spam probability (figures in the README).

Spans are reported as exact character offsets into the original string: ``text[start:end]
== span.text`` for ASCII, emoji and any other script, because the offsets come from the
tokens' UTF-8 bytes, counted back into characters. Words are runs of non-space characters, so
``WIN!!`` (two tokens) or a two-token emoji is one span.

Nothing here prints.
"""

from __future__ import annotations

import contextlib
import operator
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from spamtune.tokenizer import EOT_ID, get_tokenizer

DEFAULT_TOP_K = 5
# Most occlusion variants per message: a word each up to this many words, runs of adjacent
# words beyond. SMS messages (median 15 words) are always explained word by word.
MAX_UNITS = 64
_WORD = re.compile(r"\S+")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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
class Explanation:
    text: str
    p_spam: float  # calibrated, of the message as classified (truncated to the run's max length)
    words: tuple[Span, ...]  # every scored span, in text order

    def towards_spam(self, k: int = DEFAULT_TOP_K) -> list[Span]:
        """The ``k`` spans with the largest positive scores, strongest first."""
        return sorted((w for w in self.words if w.score > 0), key=lambda w: -w.score)[: _count(k)]

    def towards_ham(self, k: int = DEFAULT_TOP_K) -> list[Span]:
        """The ``k`` spans with the most negative scores, strongest first."""
        return sorted((w for w in self.words if w.score < 0), key=lambda w: w.score)[: _count(k)]

    def top(self, k: int = DEFAULT_TOP_K) -> list[dict]:
        """The JSON form: the top spans towards spam, then those towards ham (negative scores)."""
        return [span.to_dict() for span in self.towards_spam(k) + self.towards_ham(k)]


def _count(k: int) -> int:
    """``k`` as a count of spans: a negative one is a ValueError, where a slice ``[:k]`` would
    silently drop the weakest spans (and a float or a string a TypeError, as ``operator.index``)."""
    k = operator.index(k)
    if k < 0:
        raise ValueError(f"k must be at least 0, got {k}")
    return k


# --------------------------------------------------------------------------- offsets


def _tokenizable(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (one character for one, so every
    offset into it is an offset into ``text``): UTF-8 cannot encode them."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def token_char_spans(text: str, token_ids: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets in ``text`` of each token of its encoding.

    Tokens are byte sequences: a token may hold part of a character (an emoji is often two
    tokens). Such a token is given the whole character it touches, so its span is never empty
    and never cuts a character in two.
    """
    data = _tokenizable(text).encode("utf-8")
    char_of_byte = []
    for index, char in enumerate(text):
        char_of_byte += [index] * len(_tokenizable(char).encode("utf-8"))
    enc = get_tokenizer()
    spans, offset = [], 0
    for token in token_ids:
        size = len(enc.decode_single_token_bytes(token))
        if offset + size > len(data):
            raise ValueError("the tokens are not an encoding of this text")
        spans.append((char_of_byte[offset], char_of_byte[offset + size - 1] + 1) if size else (len(text), len(text)))
        offset += size
    return spans


def word_spans(text: str, token_spans: Sequence[tuple[int, int]], max_units: int = MAX_UNITS) -> list[tuple[int, int, list[int]]]:
    """``(start, end, token indices)`` of each word the tokens reach, in text order; past
    ``max_units`` words, runs of adjacent words (as even as possible) so there are ``max_units``.
    Words beyond the tokens (cut by the run's max length) are left out."""
    words = []
    for match in _WORD.finditer(text):
        start, end = match.span()
        tokens = [i for i, (a, b) in enumerate(token_spans) if a < end and b > start]
        if tokens:
            words.append((start, end, tokens))
    if len(words) <= max_units:
        return words
    runs, n = [], len(words)
    for u in range(max_units):
        group = words[u * n // max_units : (u + 1) * n // max_units]
        runs.append((group[0][0], group[-1][1], [i for w in group for i in w[2]]))
    return runs


def _log_odds(logits: torch.Tensor, positive_index: int, temperature: float) -> torch.Tensor:
    """Calibrated ``log p / (1 - p)`` of the positive class from class logits ``[n, C]``."""
    logits = logits.double() / temperature
    others = torch.cat([logits[:, :positive_index], logits[:, positive_index + 1 :]], dim=1)
    return logits[:, positive_index] - torch.logsumexp(others, dim=1)


def explain_texts(
    texts: list[str],
    logits_of: Callable[[list[list[int]]], torch.Tensor],
    *,
    positive_index: int,
    max_length: int,
    temperature: float = 1.0,
    max_units: int = MAX_UNITS,
) -> list[Explanation]:
    """One ``Explanation`` per text (in order). ``logits_of`` maps token lists to class logits
    ``[n, C]`` (the classifier's batched forward pass); texts are tokenised and cut to
    ``max_length`` tokens as prediction does, and every variant of every text goes through
    ``logits_of`` in one call."""
    enc = get_tokenizer()
    token_lists = [enc.encode_ordinary(_tokenizable(t))[:max_length] or [EOT_ID] for t in texts]
    plans, variants = [], []
    for text, tokens in zip(texts, token_lists):
        units = word_spans(text, token_char_spans(text, tokens), max_units) if text else []
        plans.append((len(variants), units))
        variants.append(tokens)
        for _, _, dropped in units:
            gone = set(dropped)
            variants.append([t for i, t in enumerate(tokens) if i not in gone] or [EOT_ID])
    scores = _log_odds(logits_of(variants), positive_index, temperature)
    log_odds, p_spam = scores.tolist(), torch.sigmoid(scores).tolist()
    out = []
    for text, (first, units) in zip(texts, plans):
        full = log_odds[first]
        spans = tuple(Span(text[a:b], a, b, full - log_odds[first + 1 + u]) for u, (a, b, _) in enumerate(units))
        out.append(Explanation(text, p_spam[first], spans))
    return out


class _Fp32Head(nn.Module):
    """The classification head run in fp32 even under autocast."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head
        self.out_features = head.out_features  # what GPTModel.num_classes reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())


@contextlib.contextmanager
def fp32_head(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model.out_head`` in fp32 while explaining.

    Under bf16 autocast the head's output is rounded to bf16: near a log-odds of 3 its steps are
    1/64 apart, so many words would get exactly the same occlusion score and ties would decide
    the ranking. The blocks stay in the run's precision; only the small head (emb_dim x classes)
    is computed in full, from the fp32 output of the final LayerNorm.
    """
    head = model.out_head
    model.out_head = _Fp32Head(head)
    try:
        yield model
    finally:
        model.out_head = head


# --------------------------------------------------------------------------- checking it


def without_spans(text: str, spans: Sequence[Span]) -> str:
    """``text`` with the characters of ``spans`` cut out (the whitespace around them stays)."""
    keep, last = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        keep.append(text[last : span.start])
        last = max(last, span.end)
    keep.append(text[last:])
    return "".join(keep)


@dataclass(frozen=True)
class DeletionResult:
    k: int
    messages: int  # messages with more than k scored words and at least k towards spam
    mean_p_spam: float  # before any deletion
    mean_drop_top: float  # mean fall of p_spam after removing the top-k spam words
    mean_drop_random: float  # ... after removing k random words (mean over draws)
    share_top_beats_random: float  # messages where the top-k removal lowers p_spam more

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def deletion_test(
    p_spam: Callable[[list[str]], list[float]],
    explanations: Sequence[Explanation],
    k: int = 3,
    draws: int = 5,
    seed: int = 0,
) -> DeletionResult:
    """Remove each message's top-k words towards spam, and k random words, and compare how far
    ``p_spam`` (a batch scorer: texts -> spam probabilities) falls. A faithful explanation's
    top words matter more to the model than random ones."""
    rng = random.Random(seed)
    chosen = [e for e in explanations if len(e.words) > k and len(e.towards_spam(k)) == k]
    if not chosen:
        return DeletionResult(k, 0, 0.0, 0.0, 0.0, 0.0)
    originals = p_spam([e.text for e in chosen])
    top = p_spam([without_spans(e.text, e.towards_spam(k)) for e in chosen])
    random_texts = [without_spans(e.text, rng.sample(e.words, k)) for e in chosen for _ in range(draws)]
    randoms = p_spam(random_texts)
    drops_top = [p0 - p for p0, p in zip(originals, top)]
    drops_random = [
        p0 - sum(randoms[i * draws : (i + 1) * draws]) / draws for i, p0 in enumerate(originals)
    ]  # fmt: skip
    n = len(chosen)
    return DeletionResult(
        k=k,
        messages=n,
        mean_p_spam=sum(originals) / n,
        mean_drop_top=sum(drops_top) / n,
        mean_drop_random=sum(drops_random) / n,
        share_top_beats_random=sum(t > r for t, r in zip(drops_top, drops_random)) / n,
    )
