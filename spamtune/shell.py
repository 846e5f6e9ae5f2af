"""Text the user gave (a run's path) as a terminal shows it and as a shell reads it back.

Without torch or the CLI: the run listing and the commands' hints both use it.
"""

from __future__ import annotations

import shlex


def is_control(c: str) -> bool:
    """Whether a terminal would act on the character rather than show it: C0 and C1 controls
    (escape sequences start with one) and the two Unicode line separators."""
    return ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029"


def shell_word(text: str) -> str:
    """``text`` as one shell word that a terminal shows on one line and that pastes back as
    ``text``: shlex's quoting, or, where ``text`` holds a control character (a run named with a
    newline), bash's ``$'...'`` spelling it as an escape. Shown on one line, shlex's quoting of
    such a path has its newline written ``\\n``, which names another folder."""
    if not any(is_control(c) for c in text):
        return shlex.quote(text)
    return "$'" + "".join(_escaped(c) for c in text) + "'"


# As Python writes them in a string (``cli.common.one_line``), which bash's ``$'...'`` reads back.
_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def _escaped(c: str) -> str:
    if c in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[c]
    if is_control(c):
        return f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
    return c
