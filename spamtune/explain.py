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
  cost is bounded by ``MAX_UNITS + 1`` forward passes whatever the length (plus one per window
  that ``--long`` reads, to find the one that decides);
* checked: ``deletion_test`` removes each message's top-k spam words at once, and k random
  words, and compares the fall of the spam probability (figures in the README).

**What is explained: the window that decided.** A message longer than the run's window is
read the ``--long`` way (``spamtune.long_messages``): its head, its head and tail, or chunks of
which the most spam-like decides. The explanation occludes the words of that deciding window
only (the verdict's probability is that window's), and says which it is: ``Explanation.window``,
the window's character and token ranges in the message.

Spans are reported as exact character offsets into the original string: ``text[start:end]
== span.text`` for ASCII, emoji and any other script, because the offsets come from the
tokens' UTF-8 bytes, counted back into characters. Words are runs of non-space characters, so
``WIN!!`` (two tokens) or a two-token emoji is one span; a word cut by the window's edge is the
part of it that the window reads (what occluding its tokens removes).

Nothing here prints.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from spamtune.explanation import Explanation, Span, WindowPart
from spamtune.long_messages import TokenRanges, deciding_windows, window_ids
from spamtune.options import TEXT_LONG
from spamtune.tokenizer import EOT_ID, encode_texts, get_tokenizer

# Most occlusion variants per message: a word each up to this many words, runs of adjacent
# words beyond. SMS messages (median 15 words) are always explained word by word.
MAX_UNITS = 64
_WORD = re.compile(r"\S+")
# Most token ids held at once in the variants of the texts explained together (about this many
# bytes twice over: the lists, and the forward pass's copies to find repeats). All at once, a
# chunk of predict's 2,048 lines at GPT-2's 1,024-token window was 136 M ids, 2.6 GB more memory;
# 2 M ids are still 30 long texts or hundreds of short ones per group, each many batches.
VARIANT_TOKENS = 1 << 21
_SURROGATE = re.compile("[\ud800-\udfff]")


# --------------------------------------------------------------------------- offsets


class _CharsOfBytes:
    """The character of ``text`` that each byte of its UTF-8 encoding belongs to, the encoding
    being the tokenizer's (``encode_texts``): a surrogate pair (which only a Python string can
    hold) is the one character it stands for, a lone surrogate U+FFFD."""

    def __init__(self, text: str):
        self.length = len(text)
        self._starts: list[int] | None = None
        if _SURROGATE.search(text):
            self._by_character(text)
            return
        data = text.encode("utf-8")
        self.size = len(data)
        # A character starts at each byte that is not a continuation byte (10xxxxxx): counted in
        # one pass over the bytes rather than character by character (a line is up to a MiB).
        leading = (torch.frombuffer(bytearray(data), dtype=torch.uint8) & 0xC0) != 0x80 if data else torch.zeros(0, dtype=torch.bool)
        self._char = leading.cumsum(0) - 1

    def _by_character(self, text: str) -> None:
        starts, ends, i = [], [], 0
        while i < len(text):
            char = text[i]
            if "\ud800" <= char <= "\udbff" and i + 1 < len(text) and "\udc00" <= text[i + 1] <= "\udfff":
                width, size = 2, 4  # the tokenizer reads the pair as the character it encodes
            else:
                width, size = 1, len(_SURROGATE.sub("\ufffd", char).encode("utf-8"))
            starts += [i] * size
            ends += [i + width] * size
            i += width
        self._starts, self._ends, self.size = starts, ends, len(starts)

    def spans(self, offsets: Sequence[int]) -> list[tuple[int, int]]:
        """``(start, end)`` characters of the byte ranges between consecutive ``offsets`` (each
        range is given every character it touches)."""
        if len(offsets) < 2:
            return []
        first, last = offsets[0], offsets[-1]
        if last > self.size:
            raise ValueError("the tokens are not an encoding of this text")
        if self._starts is None:
            starts = self._char[first:last].tolist()
            ends = [c + 1 for c in starts]
        else:
            starts, ends = self._starts[first:last], self._ends[first:last]
        spans = []
        for a, b in zip(offsets, offsets[1:]):
            if b > a:
                spans.append((starts[a - first], ends[b - 1 - first]))
            else:  # a token of no bytes (GPT-2 has none) sits between two characters
                at = starts[a - first] if a < last else self.length
                spans.append((at, at))
        return spans


def _byte_offsets(token_ids: Sequence[int]) -> list[int]:
    """Where each token starts in the bytes the tokens encode, and where the last one ends."""
    enc = get_tokenizer()
    offsets = [0]
    for token in token_ids:
        offsets.append(offsets[-1] + len(enc.decode_single_token_bytes(token)))
    return offsets


def token_char_spans(text: str, token_ids: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets in ``text`` of each token of its encoding (or of the
    first tokens of it).

    Tokens are byte sequences: a token may hold part of a character (an emoji is often two
    tokens). Such a token is given the whole character it touches, so its span is never empty
    and never cuts a character in two.
    """
    return _CharsOfBytes(text).spans(_byte_offsets(token_ids))


def window_token_spans(text: str, token_ids: Sequence[int], ranges: TokenRanges) -> tuple[list[tuple[int, int]], tuple[WindowPart, ...]]:
    """The character spans of the tokens a window reads (``ranges`` of ``token_ids``, the text's
    whole encoding), in the window's order, and the window's parts in characters and tokens."""
    chars, offsets = _CharsOfBytes(text), _byte_offsets(token_ids)
    if offsets[-1] != chars.size:
        raise ValueError("the tokens are not an encoding of this text")
    spans, parts = [], []
    for start, end in ranges:
        if end > start:
            part = chars.spans(offsets[start : end + 1])
            spans += part
            parts.append(WindowPart(part[0][0], part[-1][1], start, end))
    return spans, tuple(parts)


def _covered(token_spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The stretches of characters the token spans (in text order) cover without a gap."""
    stretches: list[tuple[int, int]] = []
    for start, end in token_spans:
        if stretches and start <= stretches[-1][1]:
            stretches[-1] = (stretches[-1][0], max(end, stretches[-1][1]))
        else:
            stretches.append((start, end))
    return stretches


def word_spans(text: str, token_spans: Sequence[tuple[int, int]], max_units: int = MAX_UNITS) -> list[tuple[int, int, list[int]]]:
    """``(start, end, token indices)`` of each word the tokens (their character spans, in text
    order) read, in text order; past ``max_units`` words, runs of adjacent words (as even as
    possible) so there are ``max_units``. A word is cut to the characters the tokens cover: words
    beyond them (cut by the run's max length, outside a window) are left out, and a word across
    a window's edge is its part inside. Linear in the characters and tokens covered."""
    words, first = [], 0
    for stretch_start, stretch_end in _covered(token_spans):
        for match in _WORD.finditer(text, stretch_start, stretch_end):
            start, end = match.span()
            while first < len(token_spans) and token_spans[first][1] <= start:
                first += 1
            tokens, i = [], first
            while i < len(token_spans) and token_spans[i][0] < end:
                if token_spans[i][1] > start:
                    tokens.append(i)
                i += 1
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
    long: str = TEXT_LONG,
) -> list[Explanation]:
    """One ``Explanation`` per text (in order). ``logits_of`` maps token lists to class logits
    ``[n, C]`` (the classifier's batched forward pass); texts are tokenised and read the ``long``
    way as prediction reads them (``--long``, by default their first ``max_length`` tokens), and
    each is explained in the window that decides its verdict (``explain_windows``)."""
    token_lists = encode_texts(texts)
    verdicts, windows = deciding_windows(token_lists, max_length, long, positive_index, logits_of)
    return explain_windows(
        texts, token_lists, windows, verdicts, logits_of, positive_index=positive_index, temperature=temperature, max_units=max_units
    )


def explain_windows(
    texts: Sequence[str],
    token_lists: Sequence[Sequence[int]],
    windows: Sequence[TokenRanges],
    verdict_logits: torch.Tensor,
    logits_of: Callable[[list[list[int]]], torch.Tensor],
    *,
    positive_index: int,
    temperature: float = 1.0,
    max_units: int = MAX_UNITS,
) -> list[Explanation]:
    """One ``Explanation`` per text, of the words of its window: ``token_lists`` are the texts'
    encodings (``encode_texts``: an empty text is one end-of-text token), ``windows`` the token
    ranges each window reads and ``verdict_logits`` ``[n, C]`` the logits that decided each verdict
    (``long_messages.deciding_windows``), whose probability the explanation reports. The
    variants go through ``logits_of`` a group of texts at a time, each call about
    ``VARIANT_TOKENS`` tokens (or one text's variants)."""
    # The verdict's probability as prediction computes it (spamtune.infer), bit for bit.
    p_spam = torch.softmax(verdict_logits.double() / temperature, dim=1)[:, positive_index].tolist()
    out: list[Explanation] = []
    plans: list[tuple[str, float, int, list, tuple[WindowPart, ...]]] = []
    variants: list[list[int]] = []
    held = 0  # tokens in variants

    def score_held() -> None:
        log_odds = _log_odds(logits_of(variants), positive_index, temperature).tolist()
        for text, p, first, units, parts in plans:
            full = log_odds[first]
            spans = tuple(Span(text[a:b], a, b, full - log_odds[first + 1 + u]) for u, (a, b, _) in enumerate(units))
            out.append(Explanation(text, p, spans, parts))
        plans.clear()
        variants.clear()

    for text, p, ids, ranges in zip(texts, p_spam, token_lists, windows):
        tokens = window_ids(ids, ranges)
        if text:
            spans, parts = window_token_spans(text, ids, ranges)
            units = word_spans(text, spans, max_units)
        else:  # the end-of-text token the model reads has no character to occlude
            units, parts = [], tuple(WindowPart(0, 0, start, end) for start, end in ranges)
        if variants and held + len(tokens) * (len(units) + 1) > VARIANT_TOKENS:
            score_held()
            held = 0
        plans.append((text, p, len(variants), units, parts))
        variants.append(tokens)
        for _, _, dropped in units:
            gone = set(dropped)
            variants.append([t for i, t in enumerate(tokens) if i not in gone] or [EOT_ID])
        held += len(tokens) * (len(units) + 1)
    if variants:
        score_held()
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
