"""``spamtune predict --mail PATH``: one output line per mail message, in the source's stable order.

Not a command of its own: ``predict`` hands over here when ``--mail`` is given. Fields: the
message's id (its path relative to PATH, ``N <Message-ID>`` for an mbox, ``-`` for stdin), the
label and ``p_spam``; jsonl adds ``damaged``; ``--explain`` adds the explanation, its window and
the text the model read, which they index. A message file that cannot be read keeps its line:
the label ``error``, no ``p_spam`` (and in jsonl the reason, ``error``), with a warning on stderr.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import NamedTuple

from spamtune.errors import SpamtuneError


class _Shown(NamedTuple):
    """What ``Renderer.line`` prints of a message: its id in the text's place."""

    text: str
    label: str
    probability: float


def render_line(renderer, p, explain: bool = False) -> str:
    """Text, tsv and label lines as ``predict`` writes them, the id in the text's place; jsonl has its own fields.

    ``explain``: each line also carries ``p.explanation`` and the text the model read of the
    message (``spamtune.mail.message_text``), which its spans and window are offsets into; an
    unreadable message's line has these fields empty (null in jsonl), so every line has them."""
    if renderer.fmt.value == "jsonl":
        return _jsonl_line(renderer, p, explain)
    if p.error is not None:
        line = renderer.no_verdict_line(p.label, p.id)
    else:
        line = renderer.line(_Shown(p.id, p.label, p.p_spam))
    return line.removesuffix("\n") + _after_the_id(renderer, p.explanation) + "\n" if explain else line


def _jsonl_line(renderer, p, explain: bool) -> str:
    from spamtune.cli.common import json_line

    p_spam = None if p.p_spam is None else round(p.p_spam, 6)
    record = {"id": p.id, "label": p.label, "p_spam": p_spam, "damaged": p.damaged}
    if p.error is not None:
        record["error"] = p.error
    if explain and p.explanation is None:
        record.update(explanation=None, window=None, text=None)
    elif explain:
        record.update(renderer.explanation_fields(p.explanation), text=p.explanation.text)
    return json_line(record) + "\n"


def _after_the_id(renderer, explanation) -> str:
    """What --explain adds to a tsv or text line after the message's id: tsv's explanation,
    window and text columns (empty for a message that could not be read); the explained text."""
    if renderer.fmt.value == "tsv":
        from spamtune.cli.common import tsv_field

        return "\t\t\t" if explanation is None else f"\t{renderer.explanation_columns(explanation)}\t{tsv_field(explanation.text)}"
    shown = "" if explanation is None else renderer.explained_text(explanation)
    return f"  {shown}" if shown else ""


def report_unreadable(messages: list[tuple[str, object]], source: Path) -> int:
    """Warn of each message of ``messages`` whose file could not be read; how many there were."""
    from spamtune.cli import common
    from spamtune.mail import Unreadable

    unreadable = [(message_id, raw) for message_id, raw in messages if isinstance(raw, Unreadable)]
    for message_id, raw in unreadable:
        common.warn(f"cannot read {source / message_id}: {raw.reason}; its line says error")
    return len(unreadable)


def mail_messages(source: Path):
    """``(id, raw)`` messages of a mail source, ``-`` being one message on stdin; problems raise now."""
    from spamtune.mail import MAX_MESSAGE_BYTES
    from spamtune.mail_sources import iter_messages
    from spamtune.streams import read_up_to, waiting

    if str(source) == "-":
        if sys.stdin is None:
            raise SpamtuneError("--mail - reads one message on stdin, but this process has none")
        if sys.stdin.isatty():
            raise SpamtuneError("--mail - reads one message on stdin, but stdin is a terminal")
        stdin = waiting(sys.stdin.buffer)  # a non-blocking stdin's pause is no end of the message
        raw = read_up_to(stdin, MAX_MESSAGE_BYTES)
        if not raw:  # a writer that failed (`cat missing.eml |`) must not get a verdict of ham for nothing
            raise SpamtuneError("--mail - read nothing on stdin: no message to classify")
        while stdin.read(1 << 16):  # the rest: read and dropped, so the writer is not cut off
            pass
        return iter([("-", raw)])
    if not source.exists():
        raise SpamtuneError(f"mail source not found: {source}")
    return iter_messages(source)


def classify_share(classifier, messages: list[tuple[str, bytes]], renderer, long: str | None, explain: bool = False) -> tuple[str, int]:
    """A rank's share of a round of messages (all of it on one process): its output lines, in
    order (``explain``: with why, as ``render_line`` writes it), and how many were positive."""
    from spamtune.mail_filter import classify_messages

    rounds = classify_messages(classifier, messages, long, chunk=max(1, len(messages)), explain=explain)
    predictions = [p for round_ in rounds for p in round_]
    lines = "".join(render_line(renderer, p, explain) for p in predictions)
    return lines, sum(p.label == classifier.positive_label for p in predictions)


def round_digest(messages: list[tuple[str, bytes]]) -> str:
    """What identifies a round of messages: every rank reads the source itself, and a Maildir
    that takes a delivery while they list it could give ranks different rounds."""
    return hashlib.sha256("\0".join(message_id for message_id, _ in messages).encode("utf-8", "surrogateescape")).hexdigest()
