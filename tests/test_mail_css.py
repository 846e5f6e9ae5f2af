"""Stylesheets and colours in HTML mail: text hidden by the rules of ``<style>`` elements or
written in the colour of its background is not read (``spamtune.mail_css``, applied by
``spamtune.mail_html``)."""

from __future__ import annotations

import time
from html.parser import HTMLParser

import pytest

from spamtune import mail, mail_css
from spamtune.mail import html_to_text
from spamtune.mail_css import css_colour, legacy_colour


def _styled(sheet: str, body: str) -> str:
    return html_to_text(f"<html><head><style>{sheet}</style></head><body>{body}</body></html>")


@pytest.mark.parametrize(
    "sheet, body, shown",
    [
        # The selectors spam uses to hide its salad.
        (".salad{display:none}", '<span class="salad">salad</span>pitch', "pitch"),
        ("#x{display:none}", "<p id=x>salad</p><p>pitch</p>", "pitch"),
        ("span{display:none}", "<span>salad</span>pitch", "pitch"),
        ("SPAN{DISPLAY:NONE}", "<span>salad</span>pitch", "pitch"),
        ("*{visibility:hidden} b{visibility:visible}", "<p>salad <b>pitch</b></p>", "pitch"),
        (".a.b{display:none}", '<i class="b">kept</i> <i class="a b">salad</i>', "kept"),
        ("span.x#y{font-size:0}", '<span class=x>kept</span><span class=x id=y>salad</span><b class=x id=y>kept</b>', "keptkept"),
        ("[hidden]{display:none}", "<p data-hidden>kept</p><p hidden>salad</p>", "kept"),
        ('[class="x"]{display:none}', '<p class="x y">kept</p><p class="x">salad</p>', "kept"),
        (".a, .b{display:none}", '<p class=a>salad</p><p class=b>salad</p><p class=c>pitch</p>', "pitch"),
        ("div span{display:none}", "<div><p><b><span>salad</span></b></p></div><span>pitch</span>", "pitch"),
        ("div > span{display:none}", "<div><b><span>kept</span></b><span>salad</span></div>", "kept"),
        ("table td .x{opacity:0}", "<table><tr><td><p class=x>salad</p><p>pitch</p></td></tr></table>", "pitch"),
        ("body .x{display:none}", "<p class=x>salad</p>pitch", "pitch"),  # the body is there, tag or not
        ("div{height:0;overflow:hidden}", "<div>salad</div>pitch", "pitch"),
        # Comments, the <!-- --> a mail wraps its sheet in, and at-rules a client ignores.
        ("<!-- /* x */ .x{display:none} -->", "<p class=x>salad</p>pitch", "pitch"),
        ('@import url("x.css"); @font-face{font-family:x} .x{display:none}', "<p class=x>salad</p>pitch", "pitch"),
        (".x{font-family:'a}b';display:none}", "<p class=x>salad</p>pitch", "pitch"),
        # @media: screen and all apply, print and conditional queries do not.
        ("@media screen{.x{display:none}}", "<p class=x>salad</p>pitch", "pitch"),
        ("@media only screen, print{.x{display:none}}", "<p class=x>salad</p>pitch", "pitch"),
        ("@media all{@media screen{.x{display:none}}}", "<p class=x>salad</p>pitch", "pitch"),
        ("@media print{.x{display:none}}", "<p class=x>kept</p>", "kept"),
        ("@media screen and (max-width:600px){.x{display:none}}", "<p class=x>kept</p>", "kept"),
        ("@media not screen{.x{display:none}}", "<p class=x>kept</p>", "kept"),
        # A rule with a selector not understood is skipped whole, never applied to other elements.
        (".x:hover{display:none}", "<p class=x>kept</p>", "kept"),
        (".y, .x::before{display:none}", "<p class=y>kept</p><p class=x>kept</p>", "kept kept"),
        ("p + .x{display:none}", "<p>a</p><p class=x>kept</p>", "a kept"),
        ("p ~ .x{display:none}", "<p>a</p><p class=x>kept</p>", "a kept"),
        (".x\\:y{display:none}", "<p class=x>kept</p>", "kept"),
        ("> .x{display:none}", "<p class=x>kept</p>", "kept"),
        ("svg|a{display:none}", "<a>kept</a>", "kept"),
        # Class and id names keep their case; a declaration CSS rejects hides nothing.
        (".X{display:none}", "<p class=x>kept</p>", "kept"),
        (".x{display:nonesuch}", "<p class=x>kept</p>", "kept"),
    ],
)
def test_stylesheet_rules_hide_the_elements_their_selectors_match(sheet, body, shown):
    assert _styled(sheet, body) == shown


def test_a_style_element_applies_wherever_it_stands():
    """A <style> in the body, after the elements it hides, applies as mail clients apply it; one
    inside a <template> (inert) or for print does not."""
    assert html_to_text('<p class="x">salad</p>pitch<style>.x{display:none}</style>') == "pitch"
    assert html_to_text('<div><style>.x{display:none}</style></div><p class="x">salad</p>pitch') == "pitch"
    assert html_to_text('<p class="x">salad</p>pitch<style>.x{display:none}') == "pitch"  # never closed
    assert html_to_text('<template><style>.x{display:none}</style></template><p class="x">kept</p>') == "kept"
    assert html_to_text('<style media="print">.x{display:none}</style><p class="x">kept</p>') == "kept"
    assert html_to_text('<style media="screen">.x{display:none}</style><p class="x">salad</p>pitch') == "pitch"


@pytest.mark.parametrize(
    "sheet, body, shown",
    [
        # The more specific rule wins, whatever the order; of equal ones the later.
        ("div .x{display:block} .x{display:none}", "<div><p class=x>kept</p></div>", "kept"),
        ("#y{display:block} .x.z{display:none}", "<p class='x z' id=y>kept</p>", "kept"),
        ("p.x{display:none} .x{display:block}", "<p class=x>salad</p>pitch", "pitch"),
        (".x{display:none} .y{display:block}", "<p class='x y'>kept</p>", "kept"),
        (".y{display:block} .x{display:none}", "<p class='x y'>salad</p>pitch", "pitch"),
        # !important beats any specificity and order.
        (".x{display:none !important} #y{display:block}", "<p class=x id=y>salad</p>pitch", "pitch"),
        # Rules under the hidden attribute: a display set by any rule shows the element.
        (".x{display:block}", "<p class=x hidden>kept</p>", "kept"),
        # A property the rule does not set is left to the others.
        (".x{display:none} .y{color:red}", "<p class='x y'>salad</p>pitch", "pitch"),
    ],
)
def test_the_cascade_picks_by_specificity_then_order(sheet, body, shown):
    assert _styled(sheet, body) == shown


def test_the_style_attribute_beats_stylesheet_rules_unless_they_are_important():
    assert _styled(".x{display:none}", '<p class=x style="display:block">kept</p>') == "kept"
    assert _styled("#y.x{display:none}", '<p class=x id=y style="display:block">kept</p>') == "kept"
    assert _styled(".x{display:none !important}", '<p class=x style="display:block">salad</p>pitch') == "pitch"
    assert _styled(".x{display:none !important}", '<p class=x style="display:block !important">kept</p>') == "kept"
    assert _styled(".x{display:block}", '<p class=x style="display:none">salad</p>pitch') == "pitch"


def test_rules_follow_elements_as_browsers_nest_them():
    """A rule sees the elements as browsers build them from malformed HTML: "</span>" closes
    nothing past the div, so the div is still inside the span; a <b> closed by "</div>" carries
    on with its class."""
    assert _styled("span div{display:none}", "<span><div>salad</span>still</div>pitch") == "pitch"
    assert _styled(".x{font-size:0}", "<div><b class=x>salad</div>more</b>pitch") == "pitch"
    assert _styled("div > p{display:none}", "<div><p>salad</div><p>pitch</p>") == "pitch"


def test_hostile_stylesheets_cost_bounded_time():
    """Thousands of rules on tens of thousands of nested elements: matching asks counts kept for
    the open elements, never walks the ancestors, and stops at a bound of work; rules past
    MAX_RULES are ignored. Compared with the bare parser's pass over the same document."""
    deep = "<style>" + "".join(f"div div .c{i} div span{{display:none}}" for i in range(6000)) + "</style>"
    deep += "<div class=c1>" * 40_000 + "x"
    universal = "<style>" + "* {color:red; display:inline}\n" * 6000 + "</style>" + "<span>x</span>" * 50_000
    many = "<style>" + ".a{display:none}" * 300_000 + ".late{display:none}</style><p class=late>kept</p>"
    nested = "<style>" + "@media screen{" * 50_000 + ".a{display:none}</style><p class=a>kept</p>"
    for html in (deep, universal, many, nested):
        start = time.process_time()
        HTMLParser().feed(html)
        bare = time.process_time() - start
        start = time.process_time()
        html_to_text(html)
        assert time.process_time() - start < 20 * bare + 1.0
    assert html_to_text(many) == "kept"  # the rule past the first MAX_RULES selectors is not read
    assert html_to_text(nested) == "kept"  # @media blocks nested past a few levels are not read
    sheet = mail_css.parse_stylesheet(many[len("<style>") :])
    assert sheet.count == mail_css.MAX_RULES
    # Selectors not understood count too: they cannot make the whole of a huge sheet read.
    junk = "".join(f".a{i}:hover{{display:none}}" for i in range(mail_css.MAX_RULES)) + ".late{display:none}"
    assert mail_css.parse_stylesheet(junk).count == 0


def test_matching_work_is_bounded_per_document():
    """Past MAX_MATCHING_WORK, later elements take no rules: six thousand universal rules stop
    applying after a few hundred elements instead of costing every element all of them."""
    sheet = mail_css.parse_stylesheet("* {display:none}\n" * 6000)
    matcher = mail_css.SelectorMatcher(sheet)
    subject = mail_css.Subject.of("span", [])
    applied = 0
    for _ in range(10_000):
        if matcher.rules(matcher.match(subject, ())):
            applied += 1
    assert 0 < applied < 10_000
    assert matcher.work <= mail_css.MAX_MATCHING_WORK + 2 * 6000 * 2


@pytest.mark.parametrize(
    "value, colour",
    [
        ("#fff", (255, 255, 255, 1.0)),
        ("#FfFfFf".lower(), (255, 255, 255, 1.0)),
        ("#0008", (0, 0, 0, 0x88 / 255)),
        ("#12345600", (0x12, 0x34, 0x56, 0.0)),
        ("rgb(255, 255, 255)", (255, 255, 255, 1.0)),
        ("rgb(100%,100%,100%)", (255, 255, 255, 1.0)),
        ("rgba(0, 0, 0, 0.5)", (0, 0, 0, 0.5)),
        ("rgb(0 0 0 / 50%)", (0, 0, 0, 0.5)),
        ("rgb(300, -5, 0)", (255, 0, 0, 1.0)),
        ("hsl(0, 0%, 100%)", (255, 255, 255, 1.0)),
        ("white", (255, 255, 255, 1.0)),
        ("whitesmoke", (245, 245, 245, 1.0)),
        ("snow", (255, 250, 250, 1.0)),
        ("transparent", (0, 0, 0, 0.0)),
        ("#ffff", (255, 255, 255, 1.0)),
        ("#ff", None),
        ("fff", None),
        ("rgb(1, 2)", None),
        ("var(--x)", None),
    ],
)
def test_css_colours(value, colour):
    assert css_colour(value) == colour


@pytest.mark.parametrize(
    "value, colour",
    [
        ("#fff", (255, 255, 255)),
        ("ffffff", (255, 255, 255)),
        (" #FFFFFF ", (255, 255, 255)),
        ("White", (255, 255, 255)),
        ("fff", (15, 15, 15)),  # three parts of one digit each: near black, as browsers show it
        ("#fefefe", (254, 254, 254)),
        ("#ffffffzz", (255, 255, 0)),  # a letter that is not hex reads as 0
        ("transparent", None),
        ("", None),
    ],
)
def test_legacy_colour_attributes_are_read_as_browsers_read_them(value, colour):
    read = legacy_colour(value)
    assert (read if read is None else read[:3]) == colour


@pytest.mark.parametrize(
    "html, shown",
    [
        # White on white, by every means spam uses; it takes room, as it does on the screen.
        ('pitch<font color="#ffffff">salad</font>more', "pitch more"),
        ("pitch <font color=white>salad</font>", "pitch"),
        ("pitch <font color=ffffff>salad</font>", "pitch"),
        ('pitch <span style="color:#FFF">salad</span>', "pitch"),
        ('pitch <span style="color:rgb(255,255,255)">salad</span>', "pitch"),
        ('pitch <span style="color:#fefefe">salad</span>', "pitch"),  # within a few steps of white
        ('pitch <span style="color:transparent">salad</span>', "pitch"),
        ('pitch <span style="color:rgba(0,0,0,0)">salad</span>', "pitch"),
        ('<style>.w{color:white}</style>pitch <p class=w>salad</p>', "pitch"),
        ('<table><tr><td bgcolor="#000000"><span style="color:black">salad</span></td><td>pitch</td></tr></table>', "pitch"),
        ('<table><tr><td style="background:#123456"><font color="#123456">salad</font></td></tr></table>pitch', "pitch"),
        ('<div style="background-color:red;color:red">salad</div>pitch', "pitch"),
        ('<table bgcolor=black><tr><td bgcolor="#FFFFFF"><span style="color:#ffffff">salad</span></td></tr></table>pitch', "pitch"),
        # Shown: ordinary grey and coloured text, white on a dark background, text whose colour
        # cannot be read, text over an image.
        ('<span style="color:#999999">grey</span>', "grey"),
        ('<span style="color:#eeeeee">light grey</span>', "light grey"),
        ('<font color="fff">near black</font>', "near black"),
        ('<span style="color:var(--white)">unknown</span>', "unknown"),
        ('<table bgcolor="#000"><tr><td><font color=white>white on black</font></td></tr></table>', "white on black"),
        ('<div style="background:#000 no-repeat"><font color=white>white on black</font></div>', "white on black"),
        ('<div style="background:url(hero.jpg)"><font color=white>on a picture</font></div>', "on a picture"),
        ('<table background="hero.jpg"><tr><td><font color=white>on a picture</font></td></tr></table>', "on a picture"),
        ('<div style="background:rgba(0,0,0,0.5)"><font color=white>on grey</font></div>', "on grey"),
        ('<body bgcolor="#000000" text="#ffffff"><p>white body</p></body>', "white body"),
        ('<style>body{background:#000;color:#fff}</style><p>white body</p>', "white body"),
        ('<font color=white><span style="color:#333">dark</span></font>', "dark"),
        # Links and marked text have colours of their own, whatever their parent's.
        ('<font color=white><a href="http://x.example/">link</a></font>', "link"),
        ('<font color=white><mark>marked</mark></font>', "marked"),
        ('pitch <a href="http://x.example/" style="color:#fff">salad</a>', "pitch"),
        ('<style>a{color:#fff}</style>pitch <a href="http://x.example/">salad</a>', "pitch"),
    ],
)
def test_text_of_the_colour_of_its_background_is_not_read(html, shown):
    assert html_to_text(html) == shown


def test_backgrounds_nest():
    """White text shows in a black cell, and hides again in a white cell inside it; a transparent
    background lets the one behind show through."""
    html = (
        "<table bgcolor=black><tr><td><font color=white>shown"
        "<table><tr><td bgcolor=white>salad</td></tr></table>"
        '<div style="background:transparent">shown again</div>'
        "</font></td></tr></table>"
    )
    assert html_to_text(html) == "shown shown again"
    assert html_to_text('<div style="background:#000;color:#fff">a<p style="background:#fff">salad</p>b</div>') == "a b"


def test_a_message_reads_without_the_text_its_stylesheet_and_colours_hide():
    """A newsletter-shaped spam: the pitch shown, salad buried by a class and by white text."""
    html = (
        "<html><head><style type='text/css'><!-- .pre{display:none!important;max-height:0} --></style></head>"
        "<body bgcolor='#ffffff'><div class='pre'>quarterly report meeting agenda</div>"
        "<table width='600'><tr><td><p>Cheap meds, order now</p>"
        "<p><font color='#FFFFFF' size='1'>invoice project lunch schedule</font></p></td></tr></table></body></html>"
    )
    raw = f"Subject: offer\nContent-Type: text/html; charset=utf-8\n\n{html}\n".encode()
    assert mail.extract(raw).text == "offer Cheap meds, order now"


def test_the_reading_of_mail_is_a_new_version():
    """Splits prepared when stylesheets and colours were not applied (reading 3) read some HTML
    mail into other text: training on them must be warned about."""
    assert mail.READING_VERSION >= 4
