"""Where a line of text ends: the one rule every reader of user text follows.

A line ends at ``\\n``; a ``\\r`` just before it is part of that line end (files written on
Windows end their lines with ``\\r\\n``), so it is dropped. Any other ``\\r`` is text. Training
data (``spamtune prepare``: SMS, TSV, CSV, JSONL) and the messages ``spamtune predict`` reads
both go through ``strip_line_end``: a model never learns on a text that differs from the one it
is later asked about by an invisible trailing ``\\r``.

Stdlib only: ``spamtune predict`` imports this before torch and pandas.
"""

from __future__ import annotations


def strip_line_end(line: str) -> str:
    """``line`` (split on ``\\n`` already) without the ``\\r`` of a CRLF line end."""
    return line[:-1] if line.endswith("\r") else line


def normalise_line_ends(text: str) -> str:
    """``text`` with every line end reduced to ``\\n`` (CRLF -> LF; a lone ``\\r`` stays, as
    does a CRLF-free text, unchanged). Equivalent to splitting on ``\\n``, applying
    ``strip_line_end`` to each line and joining again."""
    if "\r" not in text:
        return text
    return "\n".join(strip_line_end(line) for line in text.split("\n"))
