"""CSS as HTML mail uses it, for ``spamtune.mail_html``: declarations (``declarations``, the reader
of a ``style`` attribute) and the cascade among them (``cascade``).
"""

from __future__ import annotations

import re

# --------------------------------------------------------------------------- declarations

_IMPORTANT = re.compile(r"!\s*important\s*\Z", re.IGNORECASE)

# The pieces of CSS text: comments, strings, escapes and brackets one by one (a ";" or "}" in them
# ends nothing), the rest in runs.
STYLE_TOKENS = re.compile(
    r"""/\*.*?(?:\*/|\Z)|"(?:\\.|[^"\\])*"?|'(?:\\.|[^'\\])*'?|\\.?|[;()\[\]{}]|[^;"'\\()\[\]{}/]+|/""",
    re.DOTALL,
)
_OPENING = frozenset("([{")
_CLOSING = frozenset(")]}")


def declarations(style: str) -> dict[str, list[tuple[int, str, bool]]]:
    """The declarations of a style attribute (or of a rule's block) by lower-case property name,
    each property's in the order written, as ``(position, value, important)``: values lower case,
    whitespace collapsed, without ``!important``. Which of them applies is ``cascade``'s choice.

    A ``;`` ends a declaration only outside strings and brackets, as in CSS: split at every ``;``,
    ``font-family: "x;display:none;"`` hid text that browsers show."""
    texts = []
    current: list[str] = []
    depth = 0
    for token in STYLE_TOKENS.findall(style):
        if token.startswith("/*"):
            token = " "
        elif token in _OPENING:
            depth += 1
        elif token in _CLOSING:
            depth = max(0, depth - 1)
        elif token == ";" and not depth:
            texts.append("".join(current))
            current = []
            continue
        current.append(token)
    texts.append("".join(current))
    declared: dict[str, list[tuple[int, str, bool]]] = {}
    for position, text in enumerate(texts):
        name, colon, value = text.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            continue
        important = bool(_IMPORTANT.search(value))
        value = " ".join(_IMPORTANT.sub("", value).lower().split())
        if value:
            declared.setdefault(name, []).append((position, value, important))
    return declared


def cascade(declared, read):
    """What ``read`` makes of the declaration that applies among ``declared`` (sorted by their
    position in the cascade: the order written, or for an element's merged declarations origin,
    specificity and order), or None: the last valid one, unless an earlier one is ``!important``
    and it is not. A value ``read`` rejects (None) is dropped, as CSS drops an invalid declaration."""
    winner = None
    winner_important = False
    for _, value, important in sorted(declared or ()):
        meaning = read(value)
        if meaning is None or (winner_important and not important):
            continue
        winner, winner_important = meaning, important
    return winner
