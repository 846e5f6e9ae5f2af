"""Adding a verdict to a mail message without touching any of its bytes, as ``spamc`` does.

``spamtune filter`` (and any server) reads a message, classifies its start and writes it back
with two header lines added at the end of its header block::

    X-Spamtune-Status: Yes, p_spam=0.987, threshold=0.5
    X-Spamtune-Run: 20261125-101500-tiny; spamtune 0.1.0

in the header block's own line ending (CRLF or LF). Nothing else changes: no re-wrapping, no
re-encoding, 8-bit bytes kept, so removing the two lines gives back the exact input. Only the
first ``MAX_MESSAGE_BYTES`` are held in memory; the rest is copied through in blocks. When the
classifier cannot run, the message goes through unchanged (or, if the caller means to have the
mail server retry it, not at all) and the caller reports the error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from spamtune import __version__
from spamtune.errors import SpamtuneError
from spamtune.mail import MAX_MESSAGE_BYTES, UNREADABLE_LABEL, Unreadable, extract, message_text
from spamtune.streams import read_up_to, waiting

if TYPE_CHECKING:  # torch comes with the classifier; this module stays light without it
    from spamtune.explanation import Explanation
    from spamtune.infer import SpamClassifier

STATUS_HEADER = "X-Spamtune-Status"
RUN_HEADER = "X-Spamtune-Run"
_COPY_BLOCK = 1 << 16


@dataclass(frozen=True)
class Verdict:
    """A message's classification as the added headers state it."""

    is_spam: bool
    p_spam: float
    threshold: float
    run: str  # the run's name (its folder name)

    def header_lines(self, newline: bytes = b"\n") -> bytes:
        status = f"{STATUS_HEADER}: {'Yes' if self.is_spam else 'No'}, p_spam={self.p_spam:.3f}, threshold={self.threshold:g}"
        run = f"{RUN_HEADER}: {_header_safe(self.run)}; spamtune {__version__}"
        return status.encode("ascii") + newline + run.encode("ascii") + newline


def verdict_function(classifier: SpamClassifier, long: str | None = None) -> Callable[[bytes], Verdict]:
    """``classify`` for ``filter_message``: the message's text (``message_text``) through the
    classifier, long messages read the ``long`` way (default ``spamtune.options.DEFAULT_LONG``), at its threshold."""
    from spamtune.long_messages import predict_long

    run = classifier.run_dir.name if classifier.run_dir is not None else "unsaved"

    def classify(raw: bytes) -> Verdict:
        [prediction] = predict_long(classifier, [message_text(raw)], long)
        is_spam = prediction.label == classifier.positive_label
        return Verdict(is_spam, prediction.probability, classifier.threshold, run)

    return classify


def _header_safe(value: str) -> str:
    """Printable ASCII only, so a run's name can neither break a header line nor need encoding."""
    return "".join(c if " " <= c <= "~" else "?" for c in value)


# A line inside a header block, as the standard library's parser tells one: a field's first line
# (a name of printable characters but the colon, then the colon), a misplaced envelope line, or
# (starting with a space or tab) the continuation of a field.
_FIELD_START = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:")


def insertion_point(head: bytes, complete: bool) -> tuple[int, bytes]:
    """Where the added lines go in a message starting with ``head``, and the line ending to use.

    The header block ends at its first line that is neither a field nor a field's continuation:
    the empty line before the body, or the body's first line where that empty line is missing
    (parsers take that line for the body, so lines added after it would not be headers). The
    lines go there. When the header block runs to the end of ``head`` they go after its last
    field: at the end when ``head`` is the whole message and ends in a line break, else before
    that field (which may go on past ``head``), so that no byte of the input has to change. An
    mbox ``From `` envelope line at the top stays first.

    The added lines end as the header line just before them does: an envelope line written in
    LF over fields received in CRLF must not give LF lines among CRLF ones. With no field before
    them, as the line they go before (the empty line, or the field); failing that, as the first line.
    """
    first_newline = head.find(b"\n")
    fallback = _ending(head, first_newline)
    pos = first_newline + 1 if head.startswith(b"From ") and first_newline >= 0 else 0
    field_start, last, before_field = pos, None, None  # ``last``: the ending of the header line before ``pos``
    while (line_end := head.find(b"\n", pos)) >= 0:
        line = head[pos:line_end]
        if _FIELD_START.match(line):
            field_start, before_field = pos, last
        elif line[:1] not in (b" ", b"\t"):  # an empty line, or body text
            return pos, last or _ending(head, line_end)
        last = _ending(head, line_end)
        pos = line_end + 1
    if complete and pos == len(head):
        return pos, last or fallback
    if before_field is None:  # the first field: its own line's ending, if that line ends in ``head``
        field_end = head.find(b"\n", field_start)
        before_field = _ending(head, field_end) if field_end >= 0 else fallback
    return field_start, before_field


def _ending(head: bytes, line_end: int) -> bytes:
    """The line break of the line whose LF is at ``line_end`` (LF when there is none: -1)."""
    return b"\r\n" if line_end > 0 and head[line_end - 1 : line_end] == b"\r" else b"\n"


def with_status_headers(raw: bytes, verdict: Verdict) -> bytes:
    """``raw`` (a whole message) with the verdict's header lines added at the end of its header block."""
    at, newline = insertion_point(raw, complete=True)
    return raw[:at] + verdict.header_lines(newline) + raw[at:]


@dataclass
class FilterOutcome:
    """What ``filter_message`` did: the verdict, or the error that made it pass the message through
    (or withhold it)."""

    verdict: Verdict | None
    error: Exception | None
    size: int  # bytes of the message read: all of them, unless it was withheld


def filter_message(
    source: BinaryIO,
    sink: BinaryIO,
    classify: Callable[[bytes], Verdict] | None,
    max_bytes: int = MAX_MESSAGE_BYTES,
    pass_through: bool = True,
) -> FilterOutcome:
    """Copy one message from ``source`` to ``sink``, with the verdict's headers added.

    ``classify`` gets the message's first ``max_bytes`` (the whole message when smaller). If it is
    None or raises, the error is returned, never raised, and the message is copied unchanged: mail
    must not be lost. With ``pass_through`` False it is not written at all instead (nor read past
    its first ``max_bytes``), for a caller that has the mail server keep it and retry. An empty
    ``source`` holds no message: an error too, with nothing to write. Errors reading ``source`` or
    writing to ``sink`` do propagate.
    """
    source = waiting(source)  # a non-blocking stdin's pause is no end of the message
    head = read_up_to(source, max_bytes, _COPY_BLOCK)
    complete = len(head) < max_bytes or not _peek_more(source)
    verdict, error, added = None, None, b""
    if not head:  # no message: two header lines of our own would be passed on as one
        error = SpamtuneError("the input was empty: no message to classify")
    elif classify is None:
        error = RuntimeError("no classifier")
    else:
        try:
            verdict = classify(head)
        except Exception as exc:  # any failure: pass the message on untouched
            error = exc
    if error is not None and not pass_through:
        return FilterOutcome(None, error, len(head))
    at = 0
    if verdict is not None:
        at, newline = insertion_point(head, complete)
        added = verdict.header_lines(newline)
    sink.write(head[:at])
    sink.write(added)
    sink.write(head[at:])
    size = len(head)
    if not complete:
        size += _copy(source, sink)
    sink.flush()
    return FilterOutcome(verdict, error, size)


def _peek_more(source: BinaryIO) -> bool:
    peek = getattr(source, "peek", None)
    if peek is not None:
        return bool(peek(1))
    return True  # cannot tell without reading: treat the message as longer than the head


def _copy(source: BinaryIO, sink: BinaryIO) -> int:
    copied = 0
    while data := source.read(_COPY_BLOCK):
        sink.write(data)
        copied += len(data)
    return copied


@dataclass(frozen=True)
class MailPrediction:
    """One message's verdict for ``predict --mail``: its id (path, or mbox number and Message-ID).
    A file that could not be read has the label ``error``, no ``p_spam`` and the reason in ``error``."""

    id: str
    label: str
    p_spam: float | None
    damaged: bool
    error: str | None = None
    # Asked for (``explain``): why, in the text the model read of the message (``explanation.text``).
    explanation: Explanation | None = None


# Messages classified per round: enough to fill length-sorted batches, few enough that a
# mailbox of any size runs in bounded memory (each message is at most MAX_MESSAGE_BYTES).
MAIL_CHUNK = 256


def classify_messages(
    classifier: SpamClassifier, messages: Iterable[tuple[str, bytes]], long: str | None = None, chunk: int = MAIL_CHUNK,
    explain: bool = False,
) -> Iterator[list[MailPrediction]]:
    """Verdicts for ``(id, raw bytes)`` messages (``spamtune.mail_sources.iter_messages``), in input order,
    a list per round of ``chunk`` messages so callers can write each round as it is ready. With
    ``explain`` each verdict has its ``explanation``, of the window read the ``long`` way that decided it."""
    from spamtune.long_messages import predict_long

    pending: list[tuple[str, bytes]] = []
    for item in messages:
        pending.append(item)
        if len(pending) == chunk:
            yield _classify_round(classifier, pending, long, predict_long, explain)
            pending = []
    if pending:
        yield _classify_round(classifier, pending, long, predict_long, explain)


def _classify_round(classifier, items, long, predict_long, explain) -> list[MailPrediction]:
    from spamtune.options import DEFAULT_LONG

    results = [extract(raw) for _, raw in items if not isinstance(raw, Unreadable)]
    texts = [r.text for r in results]
    if explain and results:
        # explain's own default is the head that lines of text are read by; mail is read ``long or DEFAULT_LONG``
        predictions, explanations = classifier.predict_explained(texts, long or DEFAULT_LONG)
    else:
        predictions = predict_long(classifier, texts, long) if results else []
        explanations = [None] * len(results)
    verdicts = iter(zip(predictions, results, explanations))
    out = []
    for message_id, raw in items:
        if isinstance(raw, Unreadable):
            out.append(MailPrediction(message_id, UNREADABLE_LABEL, None, True, raw.reason))
        else:
            p, r, explanation = next(verdicts)
            out.append(MailPrediction(message_id, p.label, p.probability, r.damaged, explanation=explanation))
    return out
