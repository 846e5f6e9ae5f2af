"""The text a mail client shows of an HTML part (``visible_text``; ``spamtune.mail`` reads HTML
parts through it).

HTML goes through a real parser (``html.parser``): scripts, styles, templates, comments, the
title, datalists and the fallbacks of embeds and frames are dropped, entities decoded, the text
of links kept, block elements separate words, an image reads as its ``alt`` text (mail clients
block remote images and show that text in their place) and a tag or comment left open at the
end is dropped with what follows it.

Text that a reader does not see is dropped too: that of elements hidden by the inline means mail
clients honour, the spammer's way to bury a pitch in innocent words no one reads. An element
hides its text where its ``hidden`` attribute or its ``style`` attribute says so:
``display: none`` (or the ``hidden`` attribute, unless the style sets another display),
``opacity: 0``, ``visibility: hidden`` or ``collapse`` (a descendant may set ``visible`` again),
a font size of zero (``font-size: 0``, in any unit, or the ``font`` shorthand; a descendant may
set a size again, but not one relative to the zero: ``em``, ``%``, ``smaller``), or a block
clipped to nothing (``height``, ``max-height``, ``width`` or ``max-width`` of zero with
``overflow: hidden`` or ``clip`` and no padding); an image's alt text also by a zero ``width``
or ``height``. The style attribute is read as CSS reads it: declarations split on ``;`` (not
in strings or brackets), names and keywords in any case, comments and whitespace ignored, the
last valid declaration winning unless an earlier one is ``!important``, and a value CSS would
reject ignored, so ``font-size: 0.9em`` or ``display: nonesuch`` hide nothing.

The rules of ``<style>`` elements apply to the same properties, wherever the element stands (in
the body, after the text it hides), as the mail clients that honour them apply them; the
selectors, ``@media`` queries and bounds on hostile sheets are ``spamtune.mail_css``'s. They
cascade as in CSS: a rule beats the attributes that act as styles, a more specific rule a less
specific one and a later one an earlier one as specific, the style attribute every rule, and an
``!important`` declaration (a rule's or the attribute's) every declaration that is not.

Text whose colour cannot be told from the background behind it is hidden as well: white on white,
or ``#fefefe`` on white (each channel within ``mail_css.SAME_COLOUR_DISTANCE`` of the
background's), while grey (``#eeeeee`` on white and darker) is read. The text colour comes from
``color`` and ``<font color>``, the background from ``background-color``, a ``background`` whose
colour can be read, and the ``bgcolor`` of the body, tables and their rows and cells (colour
attributes read as browsers read them: ``ffffff`` is white, ``fff`` near black); where nothing is
set, black on white, but for the colours browsers give some elements of their own (``<mark>`` black
on yellow; links and form controls the client's, never compared). A partly transparent colour is
seen over what lies behind it. Text over a background image (``background: url(...)``, a
``background`` attribute) or on a colour not read here (``var()``, ``lab()``) is never compared.
The html and body elements keep their colours, none of their hiding styles: a client shows a
message's body inside its own page.

Not honoured: external stylesheets (``<link>``, ``@import``), which mail clients do not load;
selectors other than those ``mail_css`` reads (a rule holding one is skipped, so ``:hover`` hides
nothing); text moved off the screen (``position``, ``text-indent``, negative margins); text drawn
over by other elements; the colours of the pictures behind text.

Elements nest as a browser builds them from malformed HTML, in the parts that decide what is
hidden: an end tag closes the elements opened inside the one it names, a stray one (naming no
open element, or one beyond a table cell) is ignored, a block closes an open paragraph, a list
item the previous one, a table cell the previous cell, ``</body>`` and ``</html>`` close
nothing, a formatting element (``<b>``, ``<font>``, ...) closed by another element's end tag
carries on after it, style and all, and text written in a table outside its cells shows before
the table, as browsers move it. Nothing recurses, and a tag costs the same work at any depth of
nesting.

Hidden text that takes room on the screen (``visibility: hidden``, ``opacity: 0``, text of the
background's colour) reads as a space, keeping the words on either side apart; text that takes
none (``display: none``, a font size of zero) reads as nothing, so
``V<span style="font-size:0">x</span>iagra`` reads ``Viagra``, as on the screen.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import NamedTuple

from spamtune.mail_css import (
    TRANSPARENT,
    Colour,
    Rule,
    SelectorMatcher,
    Stylesheet,
    Subject,
    cascade,
    css_colour,
    declarations,
    indistinguishable,
    legacy_colour,
    media_applies,
    over,
    parse_stylesheet,
)

# Elements whose content is never shown: scripts, styles, templates (inert until a script uses
# them), the document's title (a browser's tab or window name, which a mail client does not
# show: a newsletter's read as a word glued to the body's first, "NewsletterDear"), and what
# browsers render as nothing: a datalist's options, and the fallbacks for embeds and frames.
_SKIPPED_ELEMENTS = frozenset({"script", "style", "template", "title", "datalist", "noembed", "noframes"})
# Of those, the ones whose content browsers read as text to their own end tag, tags and all, as
# html.parser reads scripts and styles: "<p><title>salad</p>more salad</title>" is one title,
# not a title that "</p>" closes before "more salad" shows.
# (Added to html.parser's own, which newer Pythons extend.)
_TEXT_CONTENT_ELEMENTS = tuple(dict.fromkeys((*HTMLParser.CDATA_CONTENT_ELEMENTS, "title", "noembed", "noframes")))
# Elements that separate words: "<p>a</p><p>b</p>" reads "a b", while "<b>Fr</b>ee" stays "Free".
# Every element browsers lay out as a block is one: "Hello<center>WIN</center>now", common in
# newsletters, read "HelloWINnow".
_BREAKING_ELEMENTS = frozenset(
    "address article aside blockquote br caption center dd details dialog dir div dl dt fieldset figcaption "
    "figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr img input legend li listing main menu nav ol option "
    "p plaintext pre search section select summary table tbody td tfoot th thead tr ul xmp".split()
)
# Elements that have no content and no end tag: never open.
_VOID_ELEMENTS = frozenset(
    "area base basefont bgsound br col embed frame hr img input keygen link meta param source track wbr".split()
)
# The document's own elements: a browser keeps one of each, and "</body>" or "</html>" closes nothing
# (what follows still goes into the elements open before it).
_DOCUMENT_ELEMENTS = frozenset({"html", "head", "body"})

# The HTML standard's "special" elements: an end tag of another kind ("</span>") that meets one of
# them open above its own element is ignored, as browsers ignore it.
_SPECIAL_ELEMENTS = frozenset(
    "address applet area article aside base basefont bgsound blockquote body br button caption center col "
    "colgroup dd details dir div dl dt embed fieldset figcaption figure footer form frame frameset h1 h2 h3 "
    "h4 h5 h6 head header hgroup hr html iframe img input keygen li link listing main marquee menu meta nav "
    "noembed noframes noscript object ol p param plaintext pre script search section select source style "
    "summary table tbody td template textarea tfoot th thead title tr track ul wbr xmp".split()
)
# Formatting elements: their end tag closes them across blocks opened inside (the standard's
# "adoption agency" moves those blocks out), so it is not stopped by a special element.
_FORMATTING_ELEMENTS = frozenset("a b big code em font i nobr s small strike strong tt u".split())
# Elements an end tag does not reach past ("has an element in scope"): "</div>" inside a table cell
# does not close a div around the table.
_SCOPE_BOUNDARIES = frozenset("applet caption html marquee object table td template th".split())
# Elements that a table holds directly; text and other elements written there are shown before
# the table ("foster parenting").
_TABLE_STRUCTURE = frozenset({"table", "tbody", "thead", "tfoot", "tr"})

# The start tags that close an open element of another kind, and the elements past which they do
# not look: a block closes an open paragraph, a list item the previous item, a cell the previous cell.
_PARAGRAPH_CLOSERS = frozenset(
    "address article aside blockquote center dd details dialog dir div dl dt fieldset figcaption figure footer "
    "form h1 h2 h3 h4 h5 h6 header hgroup hr li listing main menu nav ol p plaintext pre search section "
    "summary table ul xmp".split()
)


@dataclass(frozen=True)
class _Scope:
    """Where a search of the open elements stops: at the standard's scope boundaries (``default``)
    and at the elements named in ``also``."""

    default: bool
    also: tuple[str, ...] = ()


_DEFAULT_SCOPE = _Scope(True)
_PARAGRAPH_SCOPE = _Scope(True, ("button",))
_TABLE_SCOPE = _Scope(False, ("html", "table", "template"))
_IMPLIED_ENDS: dict[str, tuple[tuple[str, ...], _Scope]] = {
    "li": (("li",), _Scope(True, ("ol", "ul"))),
    "dd": (("dd", "dt"), _Scope(True, ("dl",))),
    "dt": (("dd", "dt"), _Scope(True, ("dl",))),
    "td": (("td", "th"), _TABLE_SCOPE),
    "th": (("td", "th"), _TABLE_SCOPE),
    "tr": (("tr",), _TABLE_SCOPE),
    "tbody": (("tbody", "thead", "tfoot"), _TABLE_SCOPE),
    "thead": (("tbody", "thead", "tfoot"), _TABLE_SCOPE),
    "tfoot": (("tbody", "thead", "tfoot"), _TABLE_SCOPE),
    "option": (("option",), _Scope(True, ("select",))),
    "optgroup": (("option", "optgroup"), _Scope(True, ("select",))),
}
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
# Elements after which formatting elements closed by another end tag do not carry on (see
# VisibleText._reopen_formatting), and the start tags that do not open them again.
_MARKER_ELEMENTS = frozenset("applet caption marquee object td template th".split())
_NOT_REOPENING = frozenset(
    "address article aside base blockquote body caption center col colgroup dd details dialog dir div dl dt "
    "fieldset figcaption figure footer form frameset h1 h2 h3 h4 h5 h6 head header hgroup hr html li link "
    "listing main menu meta nav noembed noframes ol p plaintext pre script search section style summary "
    "table tbody td template textarea tfoot th thead title tr ul xmp".split()
)
# At most this many formatting elements carry on (a browser lets three of each kind with the same
# attributes), and at most _MAX_REOPENED are opened again in a document: "</div>x" repeated after
# many open <b>s reopens them all for each "x", which took 4 s per 100 KB before these bounds
# (a browser does the same work). Real mail reopens a handful.
_MAX_FORMATTING = 12
_MAX_REOPENED = 50_000
# Table parts outside any table are ignored by browsers, their content shown where they stand.
_TABLE_PARTS = frozenset("caption col colgroup tbody td tfoot th thead tr".split())

# Elements laid out as blocks unless their style says otherwise: the ones a height or width can
# clip (on an inline element such as <span> neither applies, and its text shows).
_BLOCK_ELEMENTS = frozenset(
    "address article aside blockquote center details dialog dir div dl dd dt fieldset figcaption figure "
    "footer form h1 h2 h3 h4 h5 h6 header hgroup li main menu nav ol p pre section summary ul".split()
)


# --------------------------------------------------------------------------- inline style

# A CSS number with its unit: "0", "-0.0px", ".5em", "1e3%".
_DIMENSION = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)([a-z]*|%)\Z")
_ABSOLUTE_UNITS = frozenset(
    "px pt pc cm mm in q rem rex rch rcap ric rlh vw vh vi vb vmin vmax svw svh lvw lvh dvw dvh cqw cqh "
    "cqi cqb cqmin cqmax".split()
)
_RELATIVE_UNITS = frozenset("em ex ch cap ic lh %".split())  # relative to the parent's font size
_FONT_SIZE_KEYWORDS = frozenset("xx-small x-small small medium large x-large xx-large xxx-large".split())
_SYSTEM_FONTS = frozenset("caption icon menu message-box small-caption status-bar".split())
_DISPLAY_KEYWORDS = frozenset(
    "block inline run-in flow flow-root table flex grid ruby list-item contents inline-block inline-table "
    "inline-flex inline-grid table-row-group table-header-group table-footer-group table-row table-cell "
    "table-column-group table-column table-caption ruby-base ruby-text ruby-base-container "
    "ruby-text-container math -webkit-box -webkit-inline-box -webkit-flex -webkit-inline-flex -moz-box "
    "-moz-inline-box -ms-flexbox -ms-inline-flexbox -ms-grid -ms-inline-grid".split()
)
_CSS_WIDE_KEYWORDS = frozenset({"inherit", "initial", "unset", "revert", "revert-layer"})
# Displays whose box a height, width and overflow can clip (table cells grow to their content).
_CLIPPABLE_DISPLAYS = frozenset(
    "block inline-block flex inline-flex grid inline-grid list-item flow-root -webkit-box -webkit-inline-box "
    "-webkit-flex -webkit-inline-flex -moz-box -moz-inline-box -ms-flexbox -ms-inline-flexbox".split()
)


def _dimension(value: str) -> tuple[float, str] | None:
    match = _DIMENSION.match(value)
    if match is None:
        return None
    number, unit = float(match.group(1)), match.group(2)
    if unit and unit not in _ABSOLUTE_UNITS and unit not in _RELATIVE_UNITS:
        return None
    return number, unit


def _read_display(value: str) -> str | None:
    if value == "none" or value in _CSS_WIDE_KEYWORDS:
        return value
    words = value.split()
    if not all(word in _DISPLAY_KEYWORDS for word in words):
        return None
    if len(words) == 1:
        return words[0]
    # Two keywords, outer and inner display: "inline flow" is inline, "inline flex" an inline block.
    if "inline" in words:
        return "inline" if "flow" in words else "inline-block"
    return "block"


def _read_visibility(value: str) -> bool | str | None:
    """True: hidden; False: visible; "inherit": the parent's."""
    if value in ("hidden", "collapse"):
        return True
    if value in ("visible", "initial", "revert", "revert-layer"):
        return False
    if value in ("inherit", "unset"):
        return "inherit"
    return None


def _read_opacity(value: str) -> bool | None:
    """True where the element is fully transparent."""
    dimension = _dimension(value)
    if dimension is None or dimension[1] not in ("", "%"):
        return None
    return dimension[0] <= 0


def _read_font_size(value: str) -> str | None:
    """"zero", "shown" (a size of its own), or "inherit" (the parent's, or relative to it)."""
    if value in _FONT_SIZE_KEYWORDS or value in ("initial", "revert", "revert-layer"):
        return "shown"
    if value in ("inherit", "unset", "smaller", "larger"):
        return "inherit"
    dimension = _dimension(value)
    if dimension is None:
        # A size computed when the page is laid out is not worked out here: it counts as a size.
        return "shown" if value.startswith(("calc(", "clamp(", "max(", "min(", "var(")) else None
    number, unit = dimension
    if number < 0:
        return None
    if number == 0:
        return "zero"
    # A unitless size is valid in quirks mode (as pixels), which is how most mail is rendered.
    return "inherit" if unit in _RELATIVE_UNITS else "shown"


def _read_font(value: str) -> str | None:
    """The font size the ``font`` shorthand sets: the first word (before any "/line-height") that
    is a size."""
    if value in _SYSTEM_FONTS:
        return "shown"
    if value in _CSS_WIDE_KEYWORDS:
        return "inherit" if value in ("inherit", "unset") else "shown"
    for word in value.split():
        size = word.split("/", 1)[0]
        if size in _FONT_SIZE_KEYWORDS or size in ("smaller", "larger"):
            return _read_font_size(size)
        dimension = _dimension(size)
        if dimension is not None and (dimension[1] or dimension[0] == 0):
            return _read_font_size(size)
    return None


def _read_zero_length(value: str) -> bool | None:
    """True for a length of zero, False for another valid one."""
    if value in ("auto", "none") or value in _CSS_WIDE_KEYWORDS or value.endswith(")"):
        return False
    dimension = _dimension(value)
    if dimension is None:
        return False if value.endswith("content") else None  # min-content, fit-content, ...
    if dimension[0] < 0:
        return None
    return dimension[0] == 0


def _read_nonzero_length(value: str) -> bool | None:
    zero = _read_zero_length(value)
    return None if zero is None else not zero


def _read_overflow(value: str) -> tuple[bool, bool] | None:
    """Whether the overflow clips (x, y): ``overflow`` takes one value for both, or two."""
    words = value.split()
    if not 1 <= len(words) <= 2:
        return None
    clips = []
    for word in words:
        if word not in ("visible", "hidden", "clip", "scroll", "auto", "overlay") and word not in _CSS_WIDE_KEYWORDS:
            return None
        clips.append(word in ("hidden", "clip"))
    return clips[0], clips[-1]


def _read_axis_overflow(value: str) -> bool | None:
    overflow = _read_overflow(value)
    return None if overflow is None or " " in value else overflow[0]


def _read_padding(value: str) -> bool | None:
    """True where any side of a padding (shorthand or one side) is more than zero."""
    sides = [_read_zero_length(word) for word in value.split()]
    if not sides or None in sides:
        return None
    return not all(sides)


def _read_color(value: str) -> Colour | str:
    """A text colour: a colour, "inherit" (the parent's), or _UNKNOWN for a value not read here
    (``var()``, ``lab()``, ...), which hides nothing, whatever the background."""
    if value in ("inherit", "unset", "currentcolor"):
        return "inherit"
    if value in ("initial", "revert", "revert-layer"):
        return _BLACK
    return css_colour(value) or _UNKNOWN


def _read_background_color(value: str) -> Colour | str:
    if value in _CSS_WIDE_KEYWORDS:  # not inherited: the parent's background shows through
        return TRANSPARENT
    return css_colour(value) or _UNKNOWN


def _read_background(value: str) -> tuple[Colour | str, bool]:
    """The colour and whether an image is painted by the ``background`` shorthand. Its colour is
    read where it stands beside keywords and positions (``#000 no-repeat``); a value holding other
    words paints a background not read here (_UNKNOWN)."""
    if value in _CSS_WIDE_KEYWORDS or value == "none":
        return TRANSPARENT, False
    if _IMAGE_FUNCTIONS.search(value):
        return _UNKNOWN, True
    colours = []
    for word in _BACKGROUND_WORDS.findall(value):
        colour = css_colour(word)
        if colour is not None:
            colours.append(colour)
        elif word not in _BACKGROUND_KEYWORDS and word != "/" and _dimension(word) is None:
            return _UNKNOWN, False
    return (colours[0] if len(colours) == 1 else TRANSPARENT if not colours else _UNKNOWN), False


def _read_background_image(value: str) -> bool:
    return value not in _CSS_WIDE_KEYWORDS and value != "none"


def _background(declared: dict) -> Colour | str | None:
    """The background an element paints (None: none), set by the last of the ``background``,
    ``background-color`` and ``background-image`` declarations; any image makes it _UNKNOWN, as
    text over a picture is not compared with a colour."""
    shorthands = _each_read(declared, "background", _read_background)
    paints = [(position, read[0], important) for position, read, important in shorthands]
    images = [(position, read[1], important) for position, read, important in shorthands]
    paints += _each_read(declared, "background-color", _read_background_color)
    images += _each_read(declared, "background-image", _read_background_image)
    if cascade(images, lambda image: image):
        return _UNKNOWN
    colour = cascade(paints, lambda paint: paint)
    return None if colour is None or colour == TRANSPARENT else colour


_IMAGE_FUNCTIONS = re.compile(r"(?:url|gradient|image|image-set|element|cross-fade|paint)\(")
# The words of a background value, a function with its arguments as one.
_BACKGROUND_WORDS = re.compile(r"[^\s(/]+(?:\([^)]*\)?)?|/")
_BACKGROUND_KEYWORDS = frozenset(
    "repeat no-repeat repeat-x repeat-y space round scroll fixed local top bottom left right center "
    "border-box padding-box content-box auto cover contain none".split()
)
_BLACK: Colour = (0, 0, 0, 1.0)
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class _Style:
    """What an element's own attributes and the stylesheet rules it matches say about the
    visibility of its content."""

    removes: bool = False  # the element is not laid out (display: none)
    covers: bool = False  # laid out, but its content not seen (opacity: 0, clipped)
    visibility: bool | str | None = None  # hidden (True), visible (False), the parent's (None, "inherit")
    font_size: str | None = None  # "zero", "shown", or the parent's (None or "inherit")
    alt_hidden: bool = False  # an image shown at a width or height of zero
    color: Colour | str | None = None  # the text colour: a colour, _UNKNOWN (one not read here), or the parent's (None)
    background: Colour | str | None = None  # the background it paints: a colour, _UNKNOWN (an image), or none (None)


_NO_STYLE = _Style()
_UNKNOWN = "unknown"
# The elements whose bgcolor and background attributes paint a background.
_BACKGROUND_ATTRIBUTE_ELEMENTS = frozenset({"body", "table", "tr", "td", "th"})
# The colours browsers give elements of their own, below any CSS: black on yellow for <mark>, and
# colours of the system or the client, not read here (so never compared), for links (an <a href>
# is blue, not its parent's colour) and form controls.
_DEFAULT_COLOURS = {
    "mark": (("background-color", "yellow"), ("color", "black")),
    "button": (("background-color", "buttonface"), ("color", "buttontext")),
    "select": (("background-color", "field"), ("color", "fieldtext")),
    "textarea": (("background-color", "field"), ("color", "fieldtext")),
}


def _element_style(tag: str, attrs: list[tuple[str, str | None]], rules: tuple[Rule, ...] = ()) -> _Style:
    """``tag``'s ``_Style``, from the stylesheet ``rules`` it matches (lowest precedence first), its
    ``style`` and ``hidden`` attributes, and the attributes that act as styles below any CSS (an
    image's ``width`` and ``height``, a font's ``size`` and ``color``, the body's ``text``, the
    ``bgcolor`` and ``background`` of the body, tables and their cells). The first of repeated
    attributes counts, as in browsers."""
    style = None
    hidden = False
    hints = list(_DEFAULT_COLOURS.get(tag, ()))
    seen = set()
    for name, value in attrs:
        if name in seen:
            continue
        seen.add(name)
        if name == "style":
            style = value or ""
        elif name == "hidden":
            hidden = True
        elif (name == "color" and tag == "font") or (name == "text" and tag == "body"):
            _colour_hint(hints, "color", value)
        elif name == "bgcolor" and tag in _BACKGROUND_ATTRIBUTE_ELEMENTS:
            _colour_hint(hints, "background-color", value)
        elif name == "background" and tag in _BACKGROUND_ATTRIBUTE_ELEMENTS and (value or "").strip():
            hints.append(("background-image", "url()"))
        elif name == "href" and tag == "a":
            hints.append(("color", "linktext"))
    style = style or ""
    if tag == "img":
        sizes = [(value or "").strip() for name, value in attrs if name in ("width", "height")]
        sized = "0" in sizes or "0px" in sizes
    elif tag == "font":
        sized = any((value or "").strip() for name, value in attrs if name == "size")
    elif hidden or hints or rules or _STYLE_PROPERTIES.search(style):
        sized = False
    else:
        return _NO_STYLE
    # Long styles are not cached: the cache would keep them for good.
    return (_cached_style if len(style) <= _CACHED_STYLE_CHARS else _style)(tag, style, hidden, sized, tuple(hints), rules)


def _colour_hint(hints: list[tuple[str, str]], name: str, value: str | None) -> None:
    colour = legacy_colour(value or "")
    if colour is not None:
        hints.append((name, "#%02x%02x%02x" % colour[:3]))


# The properties _style reads: a style attribute that names none of them (most in a newsletter)
# is not parsed.
_STYLE_PROPERTIES = re.compile("display|opacity|visibility|font|height|width|color|background", re.IGNORECASE)
_CACHED_STYLE_CHARS = 500


def _style(tag: str, style: str, hidden: bool, sized: bool, hints: tuple = (), rules: tuple[Rule, ...] = ()) -> _Style:
    """The ``_Style`` of a ``tag`` with this ``style`` attribute and ``hidden`` one; ``sized``: an
    image with a width or height of zero, or a font with a ``size``; ``hints``: declarations made
    by other attributes; ``rules``: the stylesheet rules it matches."""
    declared = _merged(style, hints, rules) if hints or rules else declarations(style)
    display = cascade(declared.get("display"), _read_display)
    removes = display == "none" or (hidden and display is None)
    covers = bool(cascade(declared.get("opacity"), _read_opacity))
    if display is None or display in _CSS_WIDE_KEYWORDS:
        display = "block" if tag in _BLOCK_ELEMENTS else "inline"
    image = tag == "img"
    if image:  # an image of no width or height has no room for its alt text
        sized = sized or _clipped(declared, image=True)
    elif display in _CLIPPABLE_DISPLAYS:
        covers = covers or _clipped(declared, image=False)
    font_size = _font_size(declared)
    if font_size is None and tag == "font" and sized:
        # A <font size> sets a size of its own: browsers read "0" and anything below 1 as 1.
        font_size = "shown"
    visibility = cascade(declared.get("visibility"), _read_visibility)
    color = cascade(declared.get("color"), _read_color)
    return _Style(
        removes, covers, visibility, font_size, image and sized, None if color == "inherit" else color, _background(declared)
    )


def _merged(style: str, hints: tuple, rules: tuple[Rule, ...]) -> dict:
    """An element's declarations from all their sources, each placed in the cascade by
    ``(origin, specificity, order, position)``: attributes acting as styles first, then the
    stylesheet rules by specificity and order, then the style attribute, so that ``cascade``'s
    last valid declaration, unless an earlier one is ``!important``, is the one CSS applies."""
    merged: dict[str, list] = {}
    for position, (name, value) in enumerate(hints):
        merged.setdefault(name, []).append(((0, (0, 0, 0), 0, position), value, False))
    for rule in rules:
        for name, entries in rule.declared.items():
            place = (1, rule.specificity, rule.order)
            merged.setdefault(name, []).extend(((*place, position), value, important) for position, value, important in entries)
    for name, entries in declarations(style).items():
        place = (2, (0, 0, 0), 0)
        merged.setdefault(name, []).extend(((*place, position), value, important) for position, value, important in entries)
    return merged


_cached_style = functools.lru_cache(maxsize=256)(_style)  # a newsletter repeats a few styles on hundreds of elements


def _font_size(declared: dict) -> str | None:
    """The font size set by the last of the ``font`` and ``font-size`` declarations (each
    overrides the other)."""
    sizes = _each_read(declared, "font", _read_font) + _each_read(declared, "font-size", _read_font_size)
    return cascade(sizes, lambda size: size)


def _each_read(declared: dict, name: str, read) -> list:
    """The declarations of ``name`` with their values read, for a cascade among properties that
    set one another (a shorthand and its longhands)."""
    return [(position, read(value), important) for position, value, important in declared.get(name, ())]


def _clipped(declared: dict, image: bool) -> bool:
    """Whether the box is clipped to nothing: a height or width of zero with the overflow on that
    axis hidden (an image at zero size needs no overflow), and no padding to show text in."""
    paddings = ("padding", "padding-top", "padding-right", "padding-bottom", "padding-left")
    if any(cascade(declared.get(name), _read_padding) for name in paddings):
        return False
    overflow = cascade(declared.get("overflow"), _read_overflow) or (False, False)
    clips_x = cascade(declared.get("overflow-x"), _read_axis_overflow)
    clips_y = cascade(declared.get("overflow-y"), _read_axis_overflow)
    clips = {"width": overflow[0] if clips_x is None else clips_x, "height": overflow[1] if clips_y is None else clips_y}
    for size in ("height", "width"):
        if not (clips[size] or image):
            continue
        # max-height wins over height, and min-height over both.
        zero = cascade(declared.get(f"max-{size}"), _read_zero_length)
        if not zero:
            zero = cascade(declared.get(size), _read_zero_length)
        if zero and not cascade(declared.get(f"min-{size}"), _read_nonzero_length):
            return True
    return False


# --------------------------------------------------------------------------- the parser


@dataclass(frozen=True)
class _State:
    """Whether the content at one place of the document shows: not where an element around it is
    ``gone`` (not laid out) or ``covered`` (laid out, not seen), nor where the ``invisible`` and
    ``zero_font`` it inherits from the elements around it say so, nor where its text is of a
    ``same_colour`` as the background behind it. Hidden text ``takes_room`` (and reads as a
    space) unless it is ``gone`` or of ``zero_font``. ``color`` is the text colour inherited and
    ``background`` the colour seen behind the content (None: not known, so never compared)."""

    gone: bool = False
    covered: bool = False
    invisible: bool = False
    zero_font: bool = False
    same_colour: bool = False
    color: Colour | None = _BLACK
    background: tuple[float, float, float] | None = _WHITE

    @property
    def shown(self) -> bool:
        return not (self.gone or self.covered or self.invisible or self.zero_font or self.same_colour)

    @property
    def takes_room(self) -> bool:
        return not (self.gone or self.zero_font)

    def inside(self, tag: str, style: _Style) -> _State:
        """The state of the content of an element with ``style`` placed here."""
        gone = self.gone or style.removes or tag in _SKIPPED_ELEMENTS
        covered = self.covered or style.covers
        invisible = self.invisible if style.visibility in (None, "inherit") else bool(style.visibility)
        zero_font = (style.font_size == "zero") or (self.zero_font and style.font_size in (None, "inherit"))
        color = self.color if style.color is None else None if style.color == _UNKNOWN else style.color
        background = self.background
        if style.background is not None:
            if style.background == _UNKNOWN or (background is None and style.background[3] < 1):
                background = None
            else:  # a partly transparent background lets the one behind it show through
                background = over(style.background, background or _WHITE)
        here = (gone, covered, invisible, zero_font, color, background)
        if here == (self.gone, self.covered, self.invisible, self.zero_font, self.color, self.background):
            return self
        same_colour = color is not None and background is not None and indistinguishable(color, background)
        state = _State(gone, covered, invisible, zero_font, same_colour, color, background)
        return _SHOWN if state == _SHOWN else state


_SHOWN = _State()


class _Formatting:
    """An entry of the list of active formatting elements: a formatting element (``<b>``,
    ``<font>``, ...) not yet closed by its own end tag, with its style, and whether it is open."""

    __slots__ = ("name", "style", "subject", "open")

    def __init__(self, name: str, style: _Style, subject: Subject | None) -> None:
        self.name = name
        self.style = style
        self.subject = subject  # what selectors match when it is opened again (None: no stylesheet)
        self.open = True


class _Open(NamedTuple):
    """An open element: its tag, the state of its content, the stack positions of the nearest
    special element and scope boundary at or below it (-1: none), its ``_Formatting`` entry, and
    the stylesheet's selector prefixes it matches."""

    name: str
    state: _State
    special: int
    boundary: int
    formatting: _Formatting | None = None
    matched: tuple[int, ...] = ()


_DOCUMENT = _Open("", _SHOWN, -1, -1)


class VisibleText(HTMLParser):
    """Collects the text an HTML document shows (``pieces``), as the module describes.

    The open elements are a stack of ``_Open`` entries, and for each tag name the stack positions
    of the open elements of that name: an end tag finds its element, and a start tag the element
    it implicitly closes, without walking the stack, so each tag costs the same at any depth.
    """

    CDATA_CONTENT_ELEMENTS = _TEXT_CONTENT_ELEMENTS

    def __init__(self, sheet: Stylesheet | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.matcher = SelectorMatcher(sheet) if sheet is not None and sheet.count else None
        self.root = _SHOWN  # the state of the body's content
        self.root_matched: tuple[int, ...] = ()  # the selector prefixes the body matches
        self.document_attrs: dict[str, list] = {"html": [], "body": []}
        self.document_matched: dict[str, tuple[int, ...]] = {"html": (), "body": ()}
        self.document_seen: set[str] = set()
        if self.matcher is not None:
            self._set_root()
        self.pieces: list[str] = []
        self.stack: list[_Open] = []
        self.positions: dict[str, list[int]] = {}
        self.formatting: list[_Formatting | None] = []  # None: a marker (a table cell, ...)
        self.reopened = 0
        self.closing = False  # close() hands over what the parser could not finish as text
        self.unfinished = False

    # -- the open elements

    def _state(self) -> _State:
        return self.stack[-1].state if self.stack else self.root

    def _set_root(self) -> None:
        """The state of the body's content, from the colours of the html and body elements (the
        implied ones where the document has no such tags): a client shows a message's body inside
        its own page and keeps none of a hiding body's style (a message that hid its whole body
        would show its reader nothing anyway), but it paints the body's background and text
        colour, which the text is written for."""
        state, parent = _SHOWN, ()
        for tag in ("html", "body"):
            attrs = self.document_attrs[tag]
            rules = ()
            if self.matcher is not None:
                self.matcher.leave(self.document_matched[tag])
                parent = self.matcher.match(Subject.of(tag, attrs), parent)
                self.matcher.enter(parent)
                self.document_matched[tag] = parent
                rules = self.matcher.rules(parent)
            style = _element_style(tag, attrs, rules)
            state = state.inside(tag, _Style(color=style.color, background=style.background))
        self.root, self.root_matched = state, parent

    def _match(self, subject: Subject | None) -> tuple[int, ...]:
        """The selector prefixes an element opened now matches."""
        if self.matcher is None or subject is None:
            return ()
        return self.matcher.match(subject, self.stack[-1].matched if self.stack else self.root_matched)

    def _nearest(self, names) -> int:
        """The stack position of the nearest open element of one of ``names`` (-1 if none)."""
        found = -1
        for name in names:
            positions = self.positions.get(name)
            if positions and positions[-1] > found:
                found = positions[-1]
        return found

    def _in_scope(self, names, scope: _Scope) -> int:
        """The position of the nearest open element of ``names`` with no boundary of ``scope``
        above it, or -1."""
        position = self._nearest(names)
        if position < 0:
            return -1
        boundary = self._nearest(scope.also)
        if scope.default and self.stack:
            boundary = max(boundary, self.stack[-1].boundary)
        return position if boundary <= position else -1

    def _pop_to(self, position: int) -> None:
        """Closes the element at ``position`` and every one opened inside it."""
        while len(self.stack) > position:
            element = self.stack.pop()
            self.positions[element.name].pop()
            if element.formatting is not None:
                element.formatting.open = False
            if element.matched:
                self.matcher.leave(element.matched)
            if element.name in _MARKER_ELEMENTS:  # the formatting elements opened inside end here
                while self.formatting and self.formatting.pop() is not None:
                    pass

    def _push(self, tag: str, state: _State, formatting: _Formatting | None = None, matched: tuple[int, ...] = ()) -> None:
        position = len(self.stack)
        below = self.stack[-1] if self.stack else _DOCUMENT
        self.stack.append(_Open(
            tag,
            state,
            position if tag in _SPECIAL_ELEMENTS else below.special,
            position if tag in _SCOPE_BOUNDARIES else below.boundary,
            formatting,
            matched,
        ))
        if matched:
            self.matcher.enter(matched)
        self.positions.setdefault(tag, []).append(position)
        if tag in _MARKER_ELEMENTS:
            self.formatting.append(None)

    # -- formatting elements: "<div><font style='font-size:0'></div>salad" hides "salad", as
    # browsers open the font again (with its style) for the text that follows the div.

    def _last_marker(self) -> int:
        """Where the formatting entries after the last marker start (at most _MAX_FORMATTING back)."""
        start = len(self.formatting)
        while start > 0 and self.formatting[start - 1] is not None:
            start -= 1
        return start

    def _open_formatting(self, tag: str, style: _Style, subject: Subject | None) -> _Formatting:
        start = self._last_marker()
        if len(self.formatting) - start >= _MAX_FORMATTING:
            del self.formatting[start]
        entry = _Formatting(tag, style, subject)
        self.formatting.append(entry)
        return entry

    def _formatting_entry(self, tag: str) -> int:
        """The index of the last formatting entry of ``tag`` after the last marker, or -1."""
        for index in range(len(self.formatting) - 1, self._last_marker() - 1, -1):
            if self.formatting[index].name == tag:
                return index
        return -1

    def _reopen_formatting(self) -> None:
        """Opens again the formatting elements that other end tags closed (the standard's
        "reconstruct the active formatting elements")."""
        entries = self.formatting
        if not entries or entries[-1] is None or entries[-1].open or self.reopened >= _MAX_REOPENED:
            return
        start = len(entries) - 1
        while start > 0 and entries[start - 1] is not None and not entries[start - 1].open:
            start -= 1
        self.reopened += len(entries) - start
        for entry in entries[start:]:
            self._push(entry.name, self._placement().inside(entry.name, entry.style), entry, self._match(entry.subject))
            entry.open = True

    def _placement(self) -> _State:
        """The state of content added now: where the current element is a table's (not a cell),
        that of the table's parent, before which browsers show it."""
        if self.stack and self.stack[-1].name in _TABLE_STRUCTURE:
            table = self._nearest(("table",))
            return self.stack[table - 1].state if table > 0 else self.root
        return self._state()

    # -- the parser's events

    def handle_starttag(self, tag, attrs):
        if tag in _DOCUMENT_ELEMENTS:
            # The first <html> and <body> count (browsers add a later one's new attributes only).
            if tag in self.document_attrs and tag not in self.document_seen:
                self.document_seen.add(tag)
                if attrs:
                    self.document_attrs[tag] = attrs
                    self._set_root()
            return
        if tag in _TABLE_PARTS and not self.positions.get("table"):
            return
        if tag in _PARAGRAPH_CLOSERS and self.positions.get("p"):
            paragraph = self._in_scope(("p",), _PARAGRAPH_SCOPE)
            if paragraph >= 0:
                self._pop_to(paragraph)
        implied = _IMPLIED_ENDS.get(tag)
        if implied is not None:
            position = self._in_scope(*implied)
            if position >= 0:
                self._pop_to(position)
        elif tag in _HEADINGS and self.stack and self.stack[-1].name in _HEADINGS:
            self._pop_to(len(self.stack) - 1)
        formatting = self.formatting
        if formatting and formatting[-1] is not None and not formatting[-1].open and tag not in _NOT_REOPENING:
            self._reopen_formatting()
        subject = Subject.of(tag, attrs) if self.matcher is not None else None
        matched = self._match(subject)
        rules = self.matcher.rules(matched) if matched else ()
        style = _element_style(tag, attrs, rules) if attrs or rules or tag == "img" or tag in _DEFAULT_COLOURS else _NO_STYLE
        parent = self._state() if tag in _TABLE_PARTS else self._placement()
        state = parent if style is _NO_STYLE and tag not in _SKIPPED_ELEMENTS else parent.inside(tag, style)
        if tag == "img":
            self._image(attrs, _State(gone=True) if style.alt_hidden else state)
        elif tag in _BREAKING_ELEMENTS and not state.gone:
            self.pieces.append(" ")
        if tag in _FORMATTING_ELEMENTS:
            self._push(tag, state, self._open_formatting(tag, style, subject), matched)
        elif tag not in _VOID_ELEMENTS:
            self._push(tag, state, None, matched)

    def handle_startendtag(self, tag, attrs):
        # "<div/>" opens a div in HTML: only void elements have no content.
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "br":  # browsers read "</br>" as "<br>"
            self.handle_starttag(tag, [])
            return
        stack = self.stack
        if stack and stack[-1].name == tag:  # well-formed HTML: the current element's end tag
            element = stack[-1]
            if element.formatting is None or (self.formatting and self.formatting[-1] is element.formatting):
                if element.formatting is not None:
                    self.formatting.pop()
                self._pop_to(len(stack) - 1)
                if tag in _BREAKING_ELEMENTS and not element.state.gone:
                    self.pieces.append(" ")
                return
        entry = self._formatting_entry(tag) if tag in _FORMATTING_ELEMENTS else -1
        if entry >= 0 and not self.formatting[entry].open:
            del self.formatting[entry]  # closed already by another end tag: not opened again
            return
        if tag in _DOCUMENT_ELEMENTS or not self.positions.get(tag):
            return  # a stray end tag: browsers ignore it
        if tag == "p":
            position = self._in_scope(("p",), _PARAGRAPH_SCOPE)
        elif tag in _TABLE_STRUCTURE:  # "</table>" in a cell left open closes the cell, then the table
            position = self._in_scope((tag,), _TABLE_SCOPE)
        elif tag in _SPECIAL_ELEMENTS or tag in _FORMATTING_ELEMENTS:
            position = self._in_scope((tag,), _DEFAULT_SCOPE)
        else:  # any other end tag stops at the first special element open above its element
            position = self.positions[tag][-1]
            if self.stack[-1].special > position:
                position = -1
        if position < 0:
            return
        if entry >= 0 and self.formatting[entry] is self.stack[position].formatting:
            del self.formatting[entry]  # the element's own end tag: it does not carry on
        shown = not self.stack[position].state.gone
        self._pop_to(position)
        if tag in _BREAKING_ELEMENTS and shown:
            self.pieces.append(" ")

    def handle_data(self, data):
        # A tag or comment left open at the end ("<!-- ..." never closed, a message cut inside
        # "<a href=...") is markup a browser shows none of, nor of what follows it; the parser
        # hands it over as text when closed, and the model read "<!-- <p>" and "<a href" as words.
        if self.closing and (self.unfinished or data.startswith("<")):
            self.unfinished = True
            return
        formatting = self.formatting
        if formatting and formatting[-1] is not None and not formatting[-1].open:
            self._reopen_formatting()
        state = self._placement() if data.strip() else self._state()
        if state is _SHOWN or state.shown:
            self.pieces.append(data)
        elif state.takes_room:
            self.pieces.append(" ")

    def _image(self, attrs, state: _State) -> None:
        """An image as a client that blocks it shows it: its alt text, apart from the words around it."""
        if not state.takes_room:  # no box, or one sized by alt text in a font of size zero
            return
        self.pieces.append(" ")
        alt = next((value for name, value in attrs if name == "alt"), None)
        if alt and state.shown:
            self.pieces += (alt, " ")

    # Comments, declarations and processing instructions carry no text: HTMLParser's default
    # handlers already drop them.


class _StyleSheets(HTMLParser):
    """Collects the text of a document's ``<style>`` elements that apply (``texts``), in order:
    wherever they stand, as mail clients that honour them apply them, but not inside a
    ``<template>`` (inert) nor with a ``media`` attribute that no screen matches."""

    CDATA_CONTENT_ELEMENTS = _TEXT_CONTENT_ELEMENTS  # a "<style>" in a title is the title's text

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self.templates = 0
        self.current: list[str] | None = None  # the text of the <style> being read, if it applies

    def handle_starttag(self, tag, attrs):
        if tag == "template":
            self.templates += 1
        elif tag == "style":
            media = next((value for name, value in attrs if name == "media"), None)
            self.current = [] if not self.templates and (media is None or media_applies(media)) else None

    def handle_endtag(self, tag):
        if tag == "template":
            self.templates = max(0, self.templates - 1)
        elif tag == "style":
            self.finish()

    def handle_data(self, data):
        if self.current is not None:
            self.current.append(data)

    def finish(self) -> None:
        if self.current is not None:
            self.texts.append("".join(self.current))
            self.current = None


_STYLE_TAG = re.compile(r"<style[\s/>]", re.IGNORECASE)


def _stylesheet(html: str) -> Stylesheet | None:
    """The rules of the document's stylesheets, read in a first pass: a ``<style>`` may follow
    the elements it styles."""
    collector = _StyleSheets()
    try:
        collector.feed(html)
        collector.close()
    except Exception:  # html.parser is lenient; keep what was read before any failure
        pass
    if collector.current is not None and collector.cdata_elem == "style":
        # A <style> never closed runs to the end of the document, as in a browser; the parser
        # keeps that text unread.
        collector.current.append(collector.rawdata)
    collector.finish()
    sheet = None
    for text in collector.texts:
        sheet = parse_stylesheet(text, sheet)
    return sheet


def visible_text(html: str) -> str:
    """The text an HTML document shows, as ``VisibleText`` reads it (whitespace as it stands); never raises."""
    try:
        sheet = _stylesheet(html) if _STYLE_TAG.search(html) else None
    except Exception:  # a stylesheet not read hides nothing
        sheet = None
    parser = VisibleText(sheet)
    try:
        parser.feed(html)
        parser.closing = True
        parser.close()
    except Exception:  # html.parser is lenient; keep what was read before any failure
        pass
    return "".join(parser.pieces)
