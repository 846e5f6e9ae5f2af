"""CSS as HTML mail uses it, for ``spamtune.mail_html``: declarations (``declarations``, the reader
of a ``style`` attribute and of a rule's block), the cascade among them (``cascade``), colours
(``css_colour``, ``legacy_colour``, ``indistinguishable``), and the stylesheets of ``<style>``
elements (``parse_stylesheet``) with the selectors that pick the elements each rule applies to
(``SelectorMatcher``).

Stylesheets are read as a browser reads them, in the parts that mail uses: comments, strings and
the ``<!--``/``-->`` a mail wraps its sheet in are skipped, ``@import``, ``@font-face`` and the
other at-rules ignored (the rules inside ``@supports`` or ``@layer`` too), and the rules of an
``@media`` block (or a ``<style media>``) applied only where its query is ``screen``, ``all``
(optionally ``only``) or empty: ``print``, ``speech`` and every query with a condition
(``(max-width: 600px)``, ``not``) are skipped, as a query not understood must be. The text read
is then what a wide screen shows: a newsletter's mobile layout, which a ``max-width`` query shows
in place of the desktop one, stays hidden as on a desktop client. A rule applies where one of its selectors matches: type
(``span``), universal (``*``), class (``.x``), id (``#x``), attribute presence or equality
(``[hidden]``, ``[class="x"]``), compounds of them (``span.x#y``), and the descendant (`` ``)
and child (``>``) combinators. A selector list holding anything else (pseudo-classes such as
``:hover``, pseudo-elements, sibling combinators, escapes, namespaces) makes its rule skipped
whole, never applied to elements it was not meant for. Class and id names are compared with
their case, as in a standard-mode document.

Colours are read in the forms CSS gives them (hex of 3, 4, 6 or 8 digits, ``rgb()``/``rgba()``
and ``hsl()``/``hsla()`` with numbers or percentages, the named colours, ``transparent``) and
those colour attributes take (``legacy_colour``); text is ``indistinguishable`` from its
background where each channel is within ``SAME_COLOUR_DISTANCE`` of the background's.

The work is bounded on hostile input: at most ``MAX_RULES`` selectors are read, understood or not
(the rest of the sheets are ignored), a selector of more than ``MAX_COMPOUNDS`` parts is skipped,
and matching costs each element the rules indexed under its id, classes and type (and the universal
ones), never a walk of its ancestors: each open element keeps the selector prefixes it matches and
each prefix a count of the open elements matching it, so ``div .x`` asks one count. A document
whose matching passes ``MAX_MATCHING_WORK`` steps (thousands of rules applied to many thousands of
elements, which real mail never needs) has no more rules applied to its later elements.
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass, field

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


# --------------------------------------------------------------------------- colours

Colour = tuple[float, float, float, float]  # red, green, blue (0 to 255) and alpha (0 to 1)

# The CSS named colours (CSS Color level 4), which browsers also accept in colour attributes.
_NAMED_COLOURS = {
    name: tuple(int(value[i : i + 2], 16) for i in (0, 2, 4))
    for name, value in (
        pair.split(":")
        for pair in """
        aliceblue:f0f8ff antiquewhite:faebd7 aqua:00ffff aquamarine:7fffd4 azure:f0ffff beige:f5f5dc
        bisque:ffe4c4 black:000000 blanchedalmond:ffebcd blue:0000ff blueviolet:8a2be2 brown:a52a2a
        burlywood:deb887 cadetblue:5f9ea0 chartreuse:7fff00 chocolate:d2691e coral:ff7f50
        cornflowerblue:6495ed cornsilk:fff8dc crimson:dc143c cyan:00ffff darkblue:00008b darkcyan:008b8b
        darkgoldenrod:b8860b darkgray:a9a9a9 darkgreen:006400 darkgrey:a9a9a9 darkkhaki:bdb76b
        darkmagenta:8b008b darkolivegreen:556b2f darkorange:ff8c00 darkorchid:9932cc darkred:8b0000
        darksalmon:e9967a darkseagreen:8fbc8f darkslateblue:483d8b darkslategray:2f4f4f
        darkslategrey:2f4f4f darkturquoise:00ced1 darkviolet:9400d3 deeppink:ff1493 deepskyblue:00bfff
        dimgray:696969 dimgrey:696969 dodgerblue:1e90ff firebrick:b22222 floralwhite:fffaf0
        forestgreen:228b22 fuchsia:ff00ff gainsboro:dcdcdc ghostwhite:f8f8ff gold:ffd700
        goldenrod:daa520 gray:808080 green:008000 greenyellow:adff2f grey:808080 honeydew:f0fff0
        hotpink:ff69b4 indianred:cd5c5c indigo:4b0082 ivory:fffff0 khaki:f0e68c lavender:e6e6fa
        lavenderblush:fff0f5 lawngreen:7cfc00 lemonchiffon:fffacd lightblue:add8e6 lightcoral:f08080
        lightcyan:e0ffff lightgoldenrodyellow:fafad2 lightgray:d3d3d3 lightgreen:90ee90 lightgrey:d3d3d3
        lightpink:ffb6c1 lightsalmon:ffa07a lightseagreen:20b2aa lightskyblue:87cefa
        lightslategray:778899 lightslategrey:778899 lightsteelblue:b0c4de lightyellow:ffffe0
        lime:00ff00 limegreen:32cd32 linen:faf0e6 magenta:ff00ff maroon:800000 mediumaquamarine:66cdaa
        mediumblue:0000cd mediumorchid:ba55d3 mediumpurple:9370db mediumseagreen:3cb371
        mediumslateblue:7b68ee mediumspringgreen:00fa9a mediumturquoise:48d1cc mediumvioletred:c71585
        midnightblue:191970 mintcream:f5fffa mistyrose:ffe4e1 moccasin:ffe4b5 navajowhite:ffdead
        navy:000080 oldlace:fdf5e6 olive:808000 olivedrab:6b8e23 orange:ffa500 orangered:ff4500
        orchid:da70d6 palegoldenrod:eee8aa palegreen:98fb98 paleturquoise:afeeee palevioletred:db7093
        papayawhip:ffefd5 peachpuff:ffdab9 peru:cd853f pink:ffc0cb plum:dda0dd powderblue:b0e0e6
        purple:800080 rebeccapurple:663399 red:ff0000 rosybrown:bc8f8f royalblue:4169e1
        saddlebrown:8b4513 salmon:fa8072 sandybrown:f4a460 seagreen:2e8b57 seashell:fff5ee
        sienna:a0522d silver:c0c0c0 skyblue:87ceeb slateblue:6a5acd slategray:708090 slategrey:708090
        snow:fffafa springgreen:00ff7f steelblue:4682b4 tan:d2b48c teal:008080 thistle:d8bfd8
        tomato:ff6347 turquoise:40e0d0 violet:ee82ee wheat:f5deb3 white:ffffff whitesmoke:f5f5f5
        yellow:ffff00 yellowgreen:9acd32
        """.split()
    )
}
TRANSPARENT: Colour = (0.0, 0.0, 0.0, 0.0)
_HEX_COLOUR = re.compile(r"#([0-9a-f]{3,4}|[0-9a-f]{6}|[0-9a-f]{8})\Z")
_COLOUR_FUNCTION = re.compile(r"(rgba?|hsla?)\((.*)\)\Z")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?(%?)\Z")


def css_colour(value: str) -> Colour | None:
    """The colour a CSS colour value (lower case, whitespace collapsed) names, or None for one not
    read here: hex (``#rgb``, ``#rgba``, ``#rrggbb``, ``#rrggbbaa``), ``rgb()``/``rgba()`` and
    ``hsl()``/``hsla()`` with numbers or percentages (commas or spaces and a ``/`` before the
    alpha), the named colours and ``transparent``."""
    if value in _NAMED_COLOURS:
        return (*_NAMED_COLOURS[value], 1.0)
    if value == "transparent":
        return TRANSPARENT
    match = _HEX_COLOUR.match(value)
    if match:
        digits = match.group(1)
        if len(digits) <= 4:
            digits = "".join(digit * 2 for digit in digits)
        channels = [int(digits[i : i + 2], 16) for i in range(0, len(digits), 2)]
        alpha = channels[3] / 255 if len(channels) == 4 else 1.0
        return (channels[0], channels[1], channels[2], alpha)
    match = _COLOUR_FUNCTION.match(value)
    if match is None:
        return None
    arguments = match.group(2).replace(",", " ").replace("/", " / ").split()
    alpha = 1.0
    if len(arguments) == 5 and arguments[3] == "/":
        arguments = arguments[:3] + arguments[4:]
    if len(arguments) == 4:
        alpha = _channel(arguments.pop(), 1.0)
    if len(arguments) != 3 or alpha is None:
        return None
    if match.group(1).startswith("rgb"):
        channels = [_channel(argument, 255.0) for argument in arguments]
        if None in channels:
            return None
        return (*(min(255.0, max(0.0, channel)) for channel in channels), min(1.0, max(0.0, alpha)))
    hue = _channel(arguments[0].removesuffix("deg"), 360.0)
    saturation, lightness = (_channel(argument, 1.0) for argument in arguments[1:])
    if None in (hue, saturation, lightness) or not arguments[1].endswith("%") or not arguments[2].endswith("%"):
        return None
    red, green, blue = colorsys.hls_to_rgb((hue / 360) % 1, min(1.0, max(0.0, lightness)), min(1.0, max(0.0, saturation)))
    return (red * 255, green * 255, blue * 255, min(1.0, max(0.0, alpha)))


def _channel(text: str, scale: float) -> float | None:
    """A number, or a percentage of ``scale``."""
    match = _NUMBER.match(text)
    if match is None:
        return None
    if match.group(1):
        return float(text[:-1]) / 100 * scale
    return float(text)


def legacy_colour(value: str) -> Colour | None:
    """The colour of a colour attribute (``<font color>``, ``bgcolor``) as the HTML standard's
    rules for legacy colour values read it, or None where they read none: a named colour,
    ``#rgb``, else the hex digits in three equal parts (``ffffff`` is white, and ``fff`` a
    near-black ``#0f0f0f``, as browsers show it), anything not a hex digit read as ``0``."""
    value = value.strip(" \t\n\f\r").lower()
    if not value or value == "transparent":
        return None
    if value in _NAMED_COLOURS:
        return (*_NAMED_COLOURS[value], 1.0)
    if len(value) == 4 and value[0] == "#" and all(digit in "0123456789abcdef" for digit in value[1:]):
        return (*(int(digit, 16) * 17 for digit in value[1:]), 1.0)
    value = "".join("00" if ord(character) > 0xFFFF else character for character in value)[:128]
    value = "".join(character if character in "0123456789abcdef" else "0" for character in value.removeprefix("#"))
    value += "0" * (-len(value) % 3 or (3 if not value else 0))
    length = len(value) // 3
    parts = [value[i * length : (i + 1) * length][-8:] for i in range(3)]
    while len(parts[0]) > 2 and all(part[0] == "0" for part in parts):
        parts = [part[1:] for part in parts]
    return (*(int(part[:2], 16) for part in parts), 1.0)


def over(colour: Colour, behind: tuple[float, float, float]) -> tuple[float, float, float]:
    """The colour seen where ``colour`` (perhaps partly transparent) is painted over ``behind``."""
    alpha = colour[3]
    return tuple(alpha * colour[i] + (1 - alpha) * behind[i] for i in range(3))


# Text is hidden where each channel of its colour is within this much (of 255) of the background's:
# white on white, or the "#fefefe on #ffffff" spam writes to dodge an exact comparison. Light grey
# that people still read ("#eeeeee" on white, 17 apart) is kept.
SAME_COLOUR_DISTANCE = 10


def indistinguishable(text: Colour, background: tuple[float, float, float]) -> bool:
    """Whether text of colour ``text`` cannot be told from the ``background`` it is shown on."""
    seen = over(text, background)
    return all(abs(seen[i] - background[i]) <= SAME_COLOUR_DISTANCE for i in range(3))


# --------------------------------------------------------------------------- stylesheets

# At most this many selectors are read from a document's stylesheets (a newsletter's sheets hold a
# few hundred), each of at most MAX_COMPOUNDS compounds, and @media blocks are read to this depth.
MAX_RULES = 4000
MAX_COMPOUNDS = 8
_MAX_MEDIA_DEPTH = 4
# The steps of matching (a rule looked at for an element, a declaration merged) a document may take.
MAX_MATCHING_WORK = 2_000_000


@dataclass(frozen=True)
class Compound:
    """A compound selector: a type (None: any), and the ids, classes and attributes (a value of
    None: present with any value) an element must have."""

    tag: str | None
    ids: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str | None], ...] = ()

    def key(self) -> tuple[str, str]:
        """The index an element is looked up by: its id, else a class, else its type."""
        if self.ids:
            return ("#", self.ids[0])
        if self.classes:
            return (".", self.classes[0])
        return ("", self.tag or "*")

    def matches(self, subject: Subject) -> bool:
        if self.tag is not None and self.tag != subject.tag:
            return False
        if any(name != subject.id for name in self.ids) or any(name not in subject.classes for name in self.classes):
            return False
        for name, value in self.attributes:
            actual = subject.attributes.get(name)
            if actual is None or (value is not None and actual != value):
                return False
        return True


@dataclass(frozen=True, eq=False)
class Rule:
    """A style rule for one selector: its specificity, place among the document's rules, and
    declarations (as ``declarations`` reads them). Compared by identity: one per selector read."""

    specificity: tuple[int, int, int]
    order: int
    declared: dict = field(repr=False)
    weight: int = 1  # the work of merging its declarations into an element's


@dataclass
class Stylesheet:
    """The rules of a document's ``<style>`` elements, as selector prefixes: prefix ``i`` is the
    compound ``compounds[i]`` preceded (through ``combinators[i]``: " " or ">") by an element
    matching prefix ``previous[i]`` (-1: none). ``rules[i]`` are the rules whose whole selector is
    prefix ``i``; ``index`` lists the prefixes by their compound's ``Compound.key``."""

    compounds: list[Compound] = field(default_factory=list)
    combinators: list[str] = field(default_factory=list)
    previous: list[int] = field(default_factory=list)
    rules: dict[int, list[Rule]] = field(default_factory=dict)
    index: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    known: dict[tuple, int] = field(default_factory=dict)
    count: int = 0  # the rules kept
    read: int = 0  # the selectors read, kept or not

    @property
    def full(self) -> bool:
        return self.read >= MAX_RULES

    def add(self, selector: list[tuple[str, Compound]], declared: dict, weight: int) -> None:
        prefix = -1
        for combinator, compound in selector:
            key = (compound, combinator, prefix)
            if key not in self.known:
                self.known[key] = len(self.compounds)
                self.index.setdefault(compound.key(), []).append(len(self.compounds))
                self.compounds.append(compound)
                self.combinators.append(combinator)
                self.previous.append(prefix)
            prefix = self.known[key]
        specificity = (
            sum(len(compound.ids) for _, compound in selector),
            sum(len(compound.classes) + len(compound.attributes) for _, compound in selector),
            sum(compound.tag is not None for _, compound in selector),
        )
        self.rules.setdefault(prefix, []).append(Rule(specificity, self.count, declared, weight))
        self.count += 1


_MEDIA_TYPES_SHOWN = frozenset({"", "all", "screen", "only all", "only screen"})
_COMMENT_OR_MARKUP_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)|<!--|-->", re.DOTALL)


def media_applies(query: str) -> bool:
    """Whether a media query list (of ``@media`` or a ``<style media>``) holds one that a client on
    a screen of no particular size applies: ``screen`` or ``all``, without a condition."""
    queries = " ".join(_COMMENT_OR_MARKUP_COMMENT.sub(" ", query).lower().split()).split(",")
    return any(" ".join(query.split()) in _MEDIA_TYPES_SHOWN for query in queries)


def parse_stylesheet(text: str, sheet: Stylesheet | None = None, depth: int = 0) -> Stylesheet:
    """Adds the rules of the stylesheet ``text`` to ``sheet`` (a new one if None), in order. The
    text is read only as far as the rules kept: past ``MAX_RULES`` selectors, not at all."""
    sheet = Stylesheet() if sheet is None else sheet
    tokens = (match.group() for match in STYLE_TOKENS.finditer(text))
    prelude: list[str] = []
    for token in tokens:
        if sheet.full:
            break
        if token == ";" and "".join(prelude).lstrip().startswith("@"):
            prelude = []  # "@import ...;", "@charset ...;"
        elif token == "{":
            block: list[str] = []
            nesting = 1
            for token in tokens:  # the block, to its closing "}" (or the end of the text, as in CSS)
                nesting += (token == "{") - (token == "}")
                if not nesting:
                    break
                block.append(token)
            _read_rule(" ".join(_COMMENT_OR_MARKUP_COMMENT.sub(" ", "".join(prelude)).split()), "".join(block), sheet, depth)
            prelude = []
        else:
            prelude.append(token)
    return sheet


def _read_rule(prelude: str, block: str, sheet: Stylesheet, depth: int) -> None:
    if prelude.startswith("@"):
        name, _, query = prelude.partition(" ")
        if name.lower() == "@media" and depth < _MAX_MEDIA_DEPTH and media_applies(query):
            parse_stylesheet(block, sheet, depth + 1)
        return
    # Selectors not understood count as read: a sheet of thousands of them costs no more than
    # one of rules kept. A list longer than what is left is cut, so its rule is skipped.
    texts = prelude.split(",", MAX_RULES - sheet.read)
    sheet.read += len(texts)
    selectors = [parse_selector(text) for text in texts]
    if not selectors or None in selectors:
        return  # a selector not understood: the whole rule is skipped, as browsers skip an invalid one
    declared = declarations(block)
    weight = 1 + sum(len(entries) for entries in declared.values())
    for selector in selectors:
        sheet.add(selector, declared, weight)


# An identifier, as one character class after its start (overlapping alternatives would backtrack
# exponentially on a selector that fails after a long name).
_IDENT = r"-?[_a-zA-Z\u0080-\U0010ffff][\w\-\u0080-\U0010ffff]*"
_SELECTOR_PIECE = re.compile(
    rf"""(?P<combinator>\s*>\s*|\s+)
    |(?P<type>\*|{_IDENT})
    |\.(?P<class>{_IDENT})
    |\#(?P<id>{_IDENT})
    |\[\s*(?P<attribute>{_IDENT})\s*(?:=\s*(?:"(?P<quoted>[^"\\]*)"|'(?P<single>[^'\\]*)'|(?P<bare>{_IDENT}))\s*)?\]""",
    re.VERBOSE,
)


def parse_selector(text: str) -> list[tuple[str, Compound]] | None:
    """A complex selector as its compounds, each with the combinator before it (" ", ">", or ""
    for the first), or None where it holds anything not read here."""
    text = text.strip()
    if not text or len(text) > 1000:
        return None
    selector: list[tuple[str, Compound]] = []
    combinator = ""
    parts: dict = {}
    position = 0
    while position < len(text):
        match = _SELECTOR_PIECE.match(text, position)
        if match is None:
            return None
        position = match.end()
        kind = match.lastgroup if match.lastgroup in ("combinator", "type", "class", "id") else "attribute"
        if kind == "combinator":
            if not parts:
                return None
            selector.append((combinator, _compound(parts)))
            combinator, parts = (">" if ">" in match.group() else " "), {}
        elif kind == "type":
            if parts:
                return None  # a type comes first in a compound
            parts["tag"] = match.group("type").lower()
        elif kind == "attribute":
            value = next((match.group(name) for name in ("quoted", "single", "bare") if match.group(name) is not None), None)
            parts.setdefault("attributes", []).append((match.group("attribute").lower(), value))
        else:
            parts.setdefault(kind, []).append(match.group(kind))
    if not parts or len(selector) >= MAX_COMPOUNDS:
        return None
    selector.append((combinator, _compound(parts)))
    return selector


def _compound(parts: dict) -> Compound:
    tag = parts.get("tag")
    return Compound(
        None if tag == "*" else tag, tuple(parts.get("id", ())), tuple(parts.get("class", ())), tuple(parts.get("attributes", ()))
    )


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Subject:
    """What selectors look at of an element: its type, id, classes and attributes (the first of
    repeated ones, as browsers keep; a value-less attribute's value is "")."""

    tag: str
    id: str | None
    classes: frozenset[str]
    attributes: dict

    @classmethod
    def of(cls, tag: str, attrs: list[tuple[str, str | None]]) -> Subject:
        attributes: dict[str, str] = {}
        for name, value in attrs:
            attributes.setdefault(name, value or "")
        return cls(tag, attributes.get("id"), frozenset(attributes.get("class", "").split()), attributes)


class SelectorMatcher:
    """Matches the elements of one document, as they are opened, to a ``Stylesheet``'s rules.

    ``match`` gives the prefixes an element matches, from those of its parent (for ``>``) and the
    counts of open elements matching each prefix (for `` ``), which ``enter`` and ``leave`` keep
    as elements are opened and closed."""

    def __init__(self, sheet: Stylesheet) -> None:
        self.sheet = sheet
        self.open = [0] * len(sheet.compounds)
        self.work = 0

    def match(self, subject: Subject, parent: tuple[int, ...]) -> tuple[int, ...]:
        if self.work > MAX_MATCHING_WORK:
            return ()
        sheet = self.sheet
        keys = [("", subject.tag), ("", "*")]
        if subject.id is not None:
            keys.append(("#", subject.id))
        keys += [(".", name) for name in subject.classes]
        matched = []
        for key in keys:
            candidates = sheet.index.get(key)
            if not candidates:
                continue
            self.work += len(candidates)
            for prefix in candidates:
                previous = sheet.previous[prefix]
                if previous >= 0:
                    if sheet.combinators[prefix] == ">":
                        if previous not in parent:
                            continue
                    elif not self.open[previous]:
                        continue
                if sheet.compounds[prefix].matches(subject):
                    matched.append(prefix)
        return tuple(matched)

    def enter(self, matched: tuple[int, ...]) -> None:
        for prefix in matched:
            self.open[prefix] += 1

    def leave(self, matched: tuple[int, ...]) -> None:
        for prefix in matched:
            self.open[prefix] -= 1

    def rules(self, matched: tuple[int, ...]) -> tuple[Rule, ...]:
        """The rules an element matching the prefixes ``matched`` takes, lowest precedence first
        (specificity, then order)."""
        found = [rule for prefix in matched for rule in self.sheet.rules.get(prefix, ())]
        if not found:
            return ()
        self.work += sum(rule.weight for rule in found)
        if self.work > MAX_MATCHING_WORK:
            return ()
        found.sort(key=lambda rule: (rule.specificity, rule.order))
        return tuple(found)
