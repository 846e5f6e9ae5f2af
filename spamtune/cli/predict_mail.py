"""``spamtune predict --mail PATH``: one output line per mail message, in the source's stable order.

Not a command of its own: ``predict`` hands over here when ``--mail`` is given. Fields: the
message's id (its path relative to PATH, ``N <Message-ID>`` for an mbox, ``-`` for stdin), the
label and ``p_spam``; jsonl adds ``damaged``. A message file that cannot be read keeps its line:
the label ``error``, no ``p_spam`` (and in jsonl the reason, ``error``), with a warning on stderr.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from spamtune.errors import SpamtuneError


def render_line(renderer, p) -> str:
    """Text, tsv and label lines as ``predict`` writes them, the id in the text's place; jsonl has its own fields."""
    if renderer.fmt.value == "jsonl":
        p_spam = None if p.p_spam is None else round(p.p_spam, 6)
        record = {"id": p.id, "label": p.label, "p_spam": p_spam, "damaged": p.damaged}
        if p.error is not None:
            record["error"] = p.error
        from spamtune.cli.predict import json_line

        return json_line(record) + "\n"
    if p.error is not None:
        return renderer.no_verdict_line(p.label, p.id)
    from spamtune.infer import Prediction

    return renderer.line(Prediction(p.id, p.label, p.p_spam))


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


def classify_share(classifier, messages: list[tuple[str, bytes]], renderer, long: str | None) -> tuple[str, int]:
    """A rank's share of a round of messages (all of it on one process): its output lines, in
    order, and how many were positive."""
    from spamtune.mail_filter import classify_messages

    predictions = [p for round_ in classify_messages(classifier, messages, long, chunk=max(1, len(messages))) for p in round_]
    lines = "".join(render_line(renderer, p) for p in predictions)
    return lines, sum(p.label == classifier.positive_label for p in predictions)


def round_digest(messages: list[tuple[str, bytes]]) -> str:
    """What identifies a round of messages: every rank reads the source itself, and a Maildir
    that takes a delivery while they list it could give ranks different rounds."""
    return hashlib.sha256("\0".join(message_id for message_id, _ in messages).encode("utf-8", "surrogateescape")).hexdigest()
