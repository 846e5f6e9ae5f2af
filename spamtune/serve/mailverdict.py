"""What the service does with a raw RFC 822 message: its text for the model, and the verdict header.

The text comes from ``spamtune.mail.message_text`` (the same extraction as ``spamtune filter``)
when that module is installed. Until then a MINIMAL FALLBACK stands in: the Subject and the
preferred text body found by the standard library's ``get_body`` (plain text before HTML), HTML
tags stripped crudely. It exists so that the endpoint works on its own; it is not the filter's
extraction and should go once ``spamtune.mail`` is there.
"""

from __future__ import annotations

import re
from email import policy
from email.parser import BytesParser

try:
    from spamtune.mail import message_text as _mail_message_text
except ImportError:  # spamtune.mail not installed: the minimal fallback below
    _mail_message_text = None

STATUS_HEADER = "X-Spamtune-Status"

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def message_text(raw: bytes) -> str:
    """The text the model sees for ``raw``; never raises."""
    if _mail_message_text is not None:
        return _mail_message_text(raw)
    return _fallback_message_text(raw)


def _fallback_message_text(raw: bytes) -> str:
    try:
        msg = BytesParser(policy=policy.default).parsebytes(raw)
        subject = str(msg.get("subject", "") or "")
        body = msg.get_body(preferencelist=("plain", "html"))
        text = body.get_content() if body is not None else ""
        if body is not None and body.get_content_type() == "text/html":
            text = _TAG.sub(" ", text)
    except Exception:  # noqa: BLE001 - a broken message still gets a verdict, from what could be read
        subject, text = "", raw.decode("utf-8", errors="replace")
    return _SPACE.sub(" ", f"{subject} {text}").strip()


def mail_predictor(classifier):
    """``texts -> predictions`` for the texts of mail messages: the classifier's own ``predict``
    (which keeps a long text's first tokens)."""
    return classifier.predict


def status_header(is_positive: bool, p_spam: float) -> str:
    """The ``X-Spamtune-Status`` value, e.g. ``Yes, p_spam=0.987``."""
    return f"{'Yes' if is_positive else 'No'}, p_spam={p_spam:.3f}"
