"""The text the model sees for a mail message, and the readers of Maildirs, mboxes and folders."""

from __future__ import annotations

import os
import random
import threading
import time
import tracemalloc
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from mail_samples import SAMPLES, TEXT_WITH_ATTACHMENT

from spamtune import mail
from spamtune.errors import SpamtuneError, SpamtuneUsageError, SpamtuneWarning
from spamtune.mail import MAX_HEADER_CHARS, MAX_MESSAGE_BYTES, MAX_PARTS, MailText, Unreadable, extract, html_to_text, message_text
from spamtune.mail_sources import MailSource, iter_messages, parse_source


def test_there_are_at_least_thirty_crafted_messages():
    assert len(SAMPLES) >= 30


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_extracted_text(name):
    raw, expected, damaged = SAMPLES[name]
    result = extract(raw)
    assert result.text == expected
    result.text.encode("utf-8")  # what prepare writes and the tokenizer reads
    assert result.damaged is damaged, result.problems
    assert result.empty is (expected == "")
    assert message_text(raw) == expected


@pytest.mark.parametrize("name, parse_policy", [("nested_rfc822", policy.default), ("encoding_with_comment", policy.compat32)])
def test_a_parsed_message_gives_the_same_text(name, parse_policy):
    raw, expected, _ = SAMPLES[name]
    parsed = BytesParser(policy=parse_policy).parsebytes(raw)
    assert message_text(parsed) == expected


def test_skipped_parts_are_listed():
    assert extract(TEXT_WITH_ATTACHMENT).attachments == ("image/jpeg",)
    # A text attachment is read (no longer listed) where the message has no other body.
    assert extract(SAMPLES["attachments_only"][0]).attachments == ("application/pdf",)
    assert extract(SAMPLES["text_attachment_beside_body"][0]).attachments == ("text/plain",)
    with_body = SAMPLES["forwarded_as_attachment_only"][0].replace(b"--m\nContent-Type: message", b"--m\n\nFYI\n--m\nContent-Type: message")
    assert extract(with_body).text == "Fwd: look FYI" and extract(with_body).attachments == ("message/rfc822",)


def _alternative(plain: str, html: str, html_charset: str = "utf-8") -> bytes:
    return (
        "Subject: s\nContent-Type: multipart/alternative; boundary=a\n\n"
        f"--a\nContent-Type: text/plain; charset=utf-8\n\n{plain}\n"
        f"--a\nContent-Type: text/html; charset={html_charset}\n\n{html}\n--a--\n"
    ).encode()


SHARED = [f"word{i}" for i in range(18)]


@pytest.mark.parametrize("shared, plain_read", [(18, True), (17, False)])
def test_the_plain_version_is_read_only_where_it_shares_nine_tenths_of_the_words(shared, plain_read):
    """Two words of pitch in the HTML alone pass beside 18 words both versions show (18 of 20
    distinct words shared), not beside 17: the HTML's text is read then."""
    words = " ".join(SHARED[:shared])
    result = extract(_alternative(f"{words}.", f"<p>{words}</p><p>CHEAP PILLS</p>"))
    assert result.text == (f"s {words}." if plain_read else f"s {words} CHEAP PILLS")


def test_versions_compare_without_case_punctuation_or_written_out_links():
    plain = "Read THE report: <https://example.org/a/b/c?x=1>, or www.example.org/r (mailto:me@example.org)."
    html = "<p>read the <a href='https://example.org/a/b/c?x=1'>report</a>, or <b>the</b> <i>report</i></p>"
    assert extract(_alternative(plain, html)).text == f"s {plain}"


def test_only_the_problems_and_attachments_of_the_version_read_count():
    """The plain version read: a charset fallback in the HTML one (not read) does not mark the message
    damaged; the HTML version read: it does."""
    same = extract(_alternative("Your order has shipped.", "<p>Your order has shipped.</p>", "x-made-up"))
    assert same.text == "s Your order has shipped." and not same.damaged
    other = extract(_alternative("See you.", "<p>Cheap pills</p>", "x-made-up"))
    assert other.text == "s Cheap pills" and other.problems == ("unknown charset x-made-up",)
    related = SAMPLES["alternative_pitch_in_related"][0]
    assert extract(related).attachments == ("image/png",)


@pytest.mark.parametrize("charset", ["x-made-up", "zlib", "idna", "punycode", "unicode-escape", "utf-16", "koi8-r"])
def test_versions_in_odd_charsets_never_raise(charset):
    """Each version decoded by the charset rules above, then compared: no charset stops the choice."""
    html = "<p>Cheap pills \\ud800 now</p>".encode() + b"\xa0\xff"
    raw = (
        b"Subject: s\nContent-Type: multipart/alternative; boundary=a\n\n"
        + b"--a\nContent-Type: text/plain; charset=" + charset.encode() + b"\n\nSee you \xe9 soon\n"
        + b"--a\nContent-Type: text/html; charset=" + charset.encode() + b"\n\n" + html + b"\n--a--\n"
    )
    result = extract(raw)
    result.text.encode("utf-8")
    assert result.text.startswith("s ") and len(result.text) > 2


def test_html_rules():
    assert html_to_text("<p>a</p><p>b</p>") == "a b"
    # Every element laid out as a block separates words, <center> of newsletters among them.
    assert html_to_text("Hello<center>WIN</center>now") == "Hello WIN now"
    assert html_to_text("<details open><summary>Order</summary>shipped</details>") == "Order shipped"
    assert html_to_text("<b>Fr</b>ee <a href='http://x'>link text</a>") == "Free link text"
    assert html_to_text("x<!-- hidden -->y<script>never</script>z<style>.a{}</style>") == "xyz"
    assert html_to_text("&lt;tag&gt; &amp;&#x41;&copy;") == "<tag> &A©"
    assert html_to_text("before<script>unclosed script") == "before"
    # A tag or comment left open at the end shows nothing, nor does what follows it.
    assert html_to_text("<p>a</p><!-- open <p>b</p>c") == "a"
    assert html_to_text("<p>cut inside <a href='http://x.example/") == "cut inside"


@pytest.mark.parametrize(
    "html, shown",
    [
        # The preheader and salad tricks of real spam, each hiding its words.
        ('<div style="display:none;max-height:0px;overflow:hidden;mso-hide:all">salad</div>pitch', "pitch"),
        ('pitch<span style="display: none">salad</span>', "pitch"),
        ('<span style="visibility:hidden">salad</span>pitch', "pitch"),
        ('<span style="visibility:collapse">salad</span>pitch', "pitch"),
        ('<span style="font-size:0">salad</span>pitch', "pitch"),
        ('<span style="font-size: 0px">salad</span>pitch', "pitch"),
        ('<span style="font-size:0pt">salad</span>pitch', "pitch"),
        ('<span style="font-size:0em">salad</span>pitch', "pitch"),
        ('<span style="font-size:0.0%">salad</span>pitch', "pitch"),
        ('<span style="font:0/0 a">salad</span>pitch', "pitch"),
        ('<p style="opacity:0">salad</p>pitch', "pitch"),
        ('<p style="opacity: 0%">salad</p>pitch', "pitch"),
        ('<div style="max-height:0;overflow:hidden">salad</div>pitch', "pitch"),
        ('<div style="height:0px;overflow-y:hidden">salad</div>pitch', "pitch"),
        ('<div style="width:0;overflow:hidden">salad</div>pitch', "pitch"),
        ('<div hidden>salad</div>pitch', "pitch"),
        ("<template><p>salad</p></template>pitch", "pitch"),
        # The title names a browser's tab, which a mail client does not show; nor do browsers show
        # datalists or the fallbacks of embeds and frames. A title's content is text to its end tag.
        ("<head><title>Newsletter</title></head><body>pitch</body>", "pitch"),
        ("<p><title>salad</p>more salad</title>pitch", "pitch"),
        ("<datalist><option>salad</option></datalist>pitch", "pitch"),
        ("<noembed>salad</noembed>pitch<noframes>salad</noframes>", "pitch"),
        # Hidden text that takes no room joins the words around it, as on the screen.
        ('W<span style="font-size:0">salad</span>IN', "WIN"),
        ('V<div style="display:none">salad</div>iagra', "Viagra"),
        # Nothing inside a hidden element shows, whatever its own style says: void elements, images,
        # visible-styled children.
        ('<div style="display:none">a<br>b<img alt="c"><p style="display:block">d</p></div>pitch', "pitch"),
        ('<div style="opacity:0"><span style="opacity:1">salad</span></div>pitch', "pitch"),
        ('<div style="font-size:0"><span style="font-size:2em">salad</span></div>pitch', "pitch"),
        ('<div style="font-size:0"><span style="font-size:50%">salad</span></div>pitch', "pitch"),
        # ... but visibility and font size are inherited, and a descendant may set them again.
        ('<span style="visibility:hidden">salad <b style="visibility:visible">pitch</b></span>', "pitch"),
        ('<div style="font-size:0">salad<span style="font-size:14px">pitch</span></div>', "pitch"),
        ('<div style="font-size:0"><span style="font-size:small">pitch</span></div>', "pitch"),
        # What does not hide: sizes that are not zero, other displays, inline boxes a height cannot
        # clip, a display set beside the hidden attribute, padding a clipped box shows text in.
        ('<span style="font-size:0.9em">shown</span>', "shown"),
        ('<span style="font-size:.5px">shown</span>', "shown"),
        ('<div style="display:block">shown</div>', "shown"),
        ('<span style="max-height:0;overflow:hidden">shown</span>', "shown"),
        ('<div style="max-height:0">shown</div>', "shown"),
        ('<div style="height:0;padding-bottom:20px;overflow:hidden">shown</div>', "shown"),
        ('<div style="max-height:0;min-height:20px;overflow:hidden">shown</div>', "shown"),
        ('<div hidden style="display:flex">shown</div>', "shown"),
        ('<p style="opacity:0.5">shown</p>', "shown"),
        ('<span style="visibility:visible">shown</span>', "shown"),
        ("<font size=0>shown</font>", "shown"),  # browsers read a font size below 1 as 1
        ('<span aria-hidden="true">shown</span>', "shown"),  # hidden from screen readers, not the eye
        ('<body style="display:none">shown</body>', "shown"),  # clients show a body inside their own page
    ],
)
def test_text_hidden_by_inline_style_is_not_read(html, shown):
    assert html_to_text(html) == shown


@pytest.mark.parametrize(
    "style, hides",
    [
        ("DISPLAY : NONE", True),
        ("display:none !important", True),
        ("display:none!IMPORTANT;", True),
        ("color:red;;display:\tnone ; margin:0", True),
        ("display:/* a comment */none", True),
        ("display:block;display:none", True),  # the last declaration wins
        ("display:none;display:block", False),
        ("display:none !important;display:block", True),  # ... unless an earlier one is important
        ("display:none;display:bogus", True),  # an invalid value is dropped, not applied
        ("display:none-ish", False),
        ("display:nonee", False),
        ("display:none none", False),
        ("xdisplay:none", False),
        ("data-display:none", False),
        ("display none", False),
        ("font-family:'x;display:none;'", False),  # a ";" inside a string ends nothing
        ('font-family:"x;display:none;"', False),
        ("background:url(x;display:none;)", False),
        ("/* display:none */", False),
        ("font-size:0", True),
        ("font-size:00.000PX", True),
        ("font-size:0.01px", False),
        ("font-size:0.9em", False),
        ("font-size:-0", True),
        ("font-size:-1px", False),  # invalid: no size set
        ("font-size:0;font-size:12px", False),
        ("font:bold 0/0 arial", True),
        ("font:italic 12px/0 arial", False),
        ("font:0/0 a;font-size:10px", False),
        ("font-size:10px;font:0/0 a", True),
        ("opacity:0.0", True),
        ("opacity:.01", False),
        ("opacity:zero", False),
    ],
)
def test_a_style_attribute_is_read_as_css_reads_it(style, hides):
    html = f'<div style="{style}">salad</div>pitch'
    assert html_to_text(html) == ("pitch" if hides else "salad pitch")


@pytest.mark.parametrize(
    "html, shown",
    [
        # An end tag closes the elements opened inside the one it names.
        ('<div style="display:none"><span><b>salad</div>pitch', "pitch"),
        ('<table><tr><td><div style="display:none">salad</td><td>pitch</td></tr></table>', "pitch"),
        # A stray end tag un-hides nothing, and hides nothing.
        ('<div style="display:none">salad</div></div></div>pitch', "pitch"),
        ('<div style="display:none">salad</span></p></b>still hidden</div>pitch', "pitch"),
        ('<div>pitch</div></div><div style="display:none">salad</div></span>more', "pitch more"),
        # "</span>" does not reach past a block opened inside the span (browsers ignore it).
        ('<span style="display:none"><div>salad</span>still hidden</div></span>pitch', "pitch"),
        # "</div>" in a table cell does not close a div around the table.
        ('<div style="display:none"><table><tr><td>salad</div>more</td></tr></table></div>pitch', "pitch"),
        # A block closes an open paragraph, a list item the previous one, a cell the previous cell.
        ('<p style="display:none">salad<p>pitch', "pitch"),
        ('<p style="display:none">salad<div>pitch</div>', "pitch"),
        ('<ul><li style="display:none">salad<li>pitch</ul>', "pitch"),
        ('<table><tr><td style="display:none">salad<td>pitch</table>', "pitch"),
        ('<table><tr style="display:none"><td>salad<tr><td>pitch</table>', "pitch"),
        # "</table>" or "</tr>" closes a cell left open in it: what follows is not in the cell.
        ('<table><tr><td style="display:none">salad</table>pitch', "pitch"),
        ('<table><tr style="display:none"><td>salad</tr></table>pitch', "pitch"),
        ('<table><tr><td>cell</table>after', "cell after"),
        ('<table><tr><td><table><tr><td style="display:none">salad</tr></table>pitch</td></tr></table>', "pitch"),
        # A formatting element closed by another element's end tag carries on, style and all, as
        # browsers open it again for the text that follows; its own end tag, or a cell's, ends it.
        ('<div><font style="font-size:0">salad</div>more salad', ""),
        ('<div><b style="display:none">salad</div>more salad</b>pitch', "pitch"),
        ('<b><i style="display:none">salad</b>more salad</i>pitch', "pitch"),
        ('<b style="display:none"><div>salad</b>pitch</div>', "pitch"),
        ('<table><tr><td><font style="font-size:0">salad</td><td>pitch</td></tr></table>', "pitch"),
        # "<div/>" opens a div in HTML; an element never closed hides the rest, as in a browser.
        ('<div style="display:none"/>salad', ""),
        ('pitch<div style="display:none">salad<p>more salad', "pitch"),
        # "</body>" and "</html>" close nothing.
        ('<div style="display:none">salad</body></html>still hidden', ""),
        # Text and elements written in a table outside its cells show before the table.
        ('<table style="display:none">pitch<tr><td>salad</td></tr></table>', "pitch"),
        ('<table style="display:none"><span>pitch</span><tr><td>salad</td></tr></table>', "pitch"),
        # Table parts outside a table are ignored: their content shows where it stands.
        ('<td style="display:none">pitch</td>', "pitch"),
        # Tags in any case, attributes repeated (the first counts) or with entities.
        ('<DIV STYLE="DISPLAY:NONE">salad</DIV>pitch', "pitch"),
        ('<div style="color:red" style="display:none">shown</div>', "shown"),
        ('<div style="display&#58;none">salad</div>pitch', "pitch"),
        # A message cut inside a hidden element: the rest is hidden, the cut tag dropped.
        ('pitch<div style="display:none">salad</di', "pitch"),
    ],
)
def test_hidden_elements_nest_as_browsers_build_malformed_html(html, shown):
    assert html_to_text(html) == shown


def test_the_alt_text_of_an_image_is_read_in_its_place():
    """Mail clients block remote images and show their alt text: the pitch in an image reads as
    the alt text, apart from the words around it; hidden images and images of no size show none."""
    assert html_to_text('Buy<img src="http://x.example/a.png" alt="CHEAP PILLS">today') == "Buy CHEAP PILLS today"
    assert html_to_text("<a href='http://x.example/'><IMG SRC=x ALT='order &amp; save'/></a>") == "order & save"
    assert html_to_text('<img src="x"><img alt=""><img alt>text') == "text"
    assert html_to_text('a<img alt="salad" style="display:none">b') == "ab"
    assert html_to_text('a<img alt="salad" hidden>b') == "ab"
    assert html_to_text('a<div style="display:none"><img alt="salad"></div>b') == "ab"
    assert html_to_text('a<span style="font-size:0"><img alt="salad"></span>b') == "ab"
    assert html_to_text('a<img alt="salad" width="0" height="0">b') == "ab"
    assert html_to_text('a<img alt="salad" style="width:0">b') == "ab"
    assert html_to_text('a<img alt="salad" style="visibility:hidden">b') == "a b"  # it keeps its room
    assert html_to_text('a<img alt="shown" width="1" height="1">b') == "a shown b"


@pytest.mark.parametrize(
    "html",
    [
        '<div style="display:none">' * 100_000 + "x" + "</span>" * 100_000,
        "<div>" * 100_000 + "x" + "</div>" * 100_000 + "</div>" * 100_000,
        "<div><span>" * 80_000 + "<ul><li>" * 60_000,
        "<table><tr>" + "<td><p>" * 100_000,
        '<div style="' + "display:none;(" * 60_000 + '">x',
        "<div>" * 50_000 + "".join(f"<b id={i}>" for i in range(30)) + "</div>x" * 50_000,
    ],
)
def test_deep_or_malformed_html_costs_time_linear_in_its_length(html):
    """Each tag costs the same at any depth: a reader that walked the open elements for each end
    tag took the square of the depth (hours here), and one that opened again every formatting
    element for each piece of text the square of their number. Compared with the bare parser's pass."""
    from html.parser import HTMLParser

    start = time.process_time()
    HTMLParser().feed(html)
    bare = time.process_time() - start
    start = time.process_time()
    html_to_text(html)
    assert time.process_time() - start < 10 * bare + 0.5


def test_bytes_that_are_not_mail_never_raise():
    result = extract(bytes(range(256)) * 4)
    assert result.damaged
    assert "\x00" not in result.text and "\x1b" not in result.text  # control characters read as spaces


def test_mangled_messages_never_raise():
    """Random cuts, byte flips and duplicated slices of every sample: text comes back, nothing raises."""
    rng = random.Random(7)
    for raw, _, _ in SAMPLES.values():
        for _ in range(20):
            data = bytearray(raw)
            for _ in range(rng.randint(1, 6)):
                if not data:
                    break
                i = rng.randrange(len(data))
                kind = rng.randrange(3)
                if kind == 0:
                    data[i] = rng.randrange(256)
                elif kind == 1:
                    del data[i : i + rng.randint(1, 40)]
                else:
                    data[i:i] = data[max(0, i - 30) : i]
            assert isinstance(extract(bytes(data)).text, str)


def _nested(depth: int) -> bytes:
    """A message whose text part sits ``depth`` multiparts deep."""
    parts = [b"Subject: deep\nContent-Type: multipart/mixed; boundary=b0\n\n"]
    parts += [b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i - 1, i) for i in range(1, depth)]
    return b"".join(parts) + b"--b%d\nContent-Type: text/plain\n\nWIN A PRIZE NOW\n" % (depth - 1)


@pytest.mark.parametrize("depth", [700, 1500])
def test_parts_nested_past_the_recursion_limit_still_give_their_text(depth):
    """Nesting stopped the walk (700 levels) or the standard library's parser (1,500) with a
    RecursionError; both now stop at MAX_PARTS levels, and the raw rest of the message follows the
    text read so far rather than nothing, which read as an empty message."""
    result = extract(_nested(depth))
    assert result.problems == ("too many parts",) and result.damaged
    assert result.text.startswith("deep Content-Type: multipart/mixed; boundary=b%d" % MAX_PARTS)
    assert result.text.endswith("WIN A PRIZE NOW")
    assert extract(_nested(50)).text == "deep WIN A PRIZE NOW"


def _many_parts(count: int) -> bytes:
    """A message of ``count`` text parts, each with its own 1 KB Content-Type (the parser's costly header)."""
    parts = (b"--B\nContent-Type: text/plain; a%d=b; " % i + b"a=b; " * 200 + b"\n\nhi %d\n" % i for i in range(count))
    return b"Subject: s\nContent-Type: multipart/mixed; boundary=B\n\n" + b"".join(parts) + b"--B--\n"


def test_a_message_of_many_parts_is_parsed_to_its_first_parts_only(monkeypatch):
    """Each part's Content-Type costs ~5 ms to parse, twice: 960 parts took 7-15 s. The parse and
    the walk stop at MAX_PARTS parts; the rest is read as raw text, so it cannot hide words."""
    parsed = []
    real = mail._parsed_header
    monkeypatch.setattr(mail, "_parsed_header", lambda name, value: parsed.append(value) or real(name, value))
    result = extract(_many_parts(960))
    # The work done: the headers of the parts read (the multipart is the first) and of the one the
    # parse stopped in, not of all 960.
    assert len({value for value in parsed if value.startswith("text/plain")}) == MAX_PARTS
    assert result.damaged and result.problems == ("too many parts",)
    read = " ".join(f"hi {i}" for i in range(MAX_PARTS - 1))
    assert result.text.startswith(f"s {read} Content-Type: text/plain; a{MAX_PARTS - 1}=b;")
    assert result.text.endswith("hi 959 --B--")  # the parts past the limit: raw
    few = extract(_many_parts(MAX_PARTS - 1))
    assert not few.damaged and few.text == "s " + read


def _measured(function, *args):
    """``function(*args)``, the seconds it took and its peak of traced memory in bytes."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = function(*args)
        return result, time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_huge_headers_cost_bounded_memory_and_time():
    """The standard library parses a header in time and memory that grow with the square of its
    length (this Subject alone took 250 MB and the Content-Type seconds): headers are cut first."""
    raw = (
        b"Subject: WIN" + b" =?utf-8?q?cash?=" * 6000 + b"\n"
        b"Content-Type: text/plain; charset=utf-8; " + b"a=b; " * 20000 + b"\n\nclaim your prize\n"
    )
    result, seconds, peak = _measured(extract, raw)
    assert result.text.startswith("WIN cashcashcash") and result.text.endswith(" claim your prize")
    assert result.damaged and "header too long" in result.problems
    assert peak < 4 * MAX_MESSAGE_BYTES
    assert seconds < 2
    assert not extract(SAMPLES["plain"][0]).damaged  # ordinary headers are not cut


def test_a_charset_whose_codec_takes_quadratic_time_is_not_used():
    """Python's punycode codec: 2.5 s to find this 200 KB body invalid (10 s at 400 KB, minutes at a MiB)."""
    raw = b"Subject: s\nContent-Type: text/plain; charset=punycode\n\n" + b"a" * 100_000 + b"-" + b"zz" * 50_000 + b"\n"
    result, seconds, _ = _measured(extract, raw)
    assert seconds < 1
    assert result.problems == ("unknown charset punycode",) and result.text.startswith("s aaaa")


def _big_attachment_message(size: int) -> bytes:
    head = (
        b"Subject: holiday photos\nContent-Type: multipart/mixed; boundary=m\n\n"
        b"--m\nContent-Type: text/plain\n\nThe photos from the trip.\n"
        b"--m\nContent-Type: image/jpeg\nContent-Disposition: attachment; filename=a.jpg\n"
        b"Content-Transfer-Encoding: base64\n\n"
    )
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\n"
    return head + line * (size // len(line)) + b"--m--\n"


def test_headers_padded_past_the_part_read_make_the_message_damaged():
    pitch = b"Subject: WIN a prize\n\nClaim your cash now"
    line = b"X-Padding: yyyy\n"  # 16 bytes: the cut falls between two header lines, no defect there
    result = extract(line * (MAX_MESSAGE_BYTES // len(line)) + pitch)
    assert result.truncated and result.text == "" and result.damaged
    assert result.problems == ("header block longer than the part read",)
    assert not extract(b"X-Pad: y\n" * 1000 + pitch).damaged  # padding within the MiB read: read whole


def test_a_20_mb_attachment_is_cut_not_parsed_in_full():
    raw = _big_attachment_message(20 << 20)
    result, seconds, peak = _measured(extract, raw)
    assert result.text == "holiday photos The photos from the trip."
    assert result.truncated and not result.damaged
    assert result.attachments == ("image/jpeg",)
    assert peak < 12 * MAX_MESSAGE_BYTES  # the parse of the first MiB only, not of 20
    assert seconds < 5


def test_reading_a_20_mb_message_file_keeps_only_its_start(tmp_path):
    (tmp_path / "big.eml").write_bytes(_big_attachment_message(20 << 20))
    tracemalloc.start()
    [(message_id, raw)] = list(iter_messages(tmp_path / "big.eml"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert message_id == "big.eml" and len(raw) == MAX_MESSAGE_BYTES
    assert peak < 3 * MAX_MESSAGE_BYTES


MBOX = (
    b"From alice@example.org Mon Nov 23 10:00:00 2026\n"
    b"Subject: first\nMessage-ID: <one@example.org>\n\n"
    b"Hello\n>From the start, this line was quoted\n>>From here too\nFrom inside a paragraph is not a separator\n\n"
    b"From bob@example.org Mon Nov 23 11:00:00 2026\n"
    b"Subject: second\n\nNo Message-ID here.\n\n"
    b"From carol@example.org Mon Nov 23 12:00:00 2026\n"
    b"Subject: third\nMessage-ID:\n <folded@example.org>\n\nlast one\n"
)


def test_mbox_messages_ids_and_from_unquoting(tmp_path):
    path = tmp_path / "inbox"
    path.write_bytes(MBOX)
    items = list(iter_messages(path))
    assert [item_id for item_id, _ in items] == ["1 <one@example.org>", "2", "3 <folded@example.org>"]
    assert items[0][1] == (
        b"Subject: first\nMessage-ID: <one@example.org>\n\n"
        b"Hello\nFrom the start, this line was quoted\n>From here too\nFrom inside a paragraph is not a separator\n"
    )
    assert items[1][1] == b"Subject: second\n\nNo Message-ID here.\n"
    assert [message_text(raw) for _, raw in items][2] == "third last one"


def test_a_message_id_folded_over_a_whole_message_costs_linear_time(tmp_path):
    """Each folded line was added to the value read so far, copying it: 3.5 s for this one message."""
    path = tmp_path / "inbox"
    path.write_bytes(b"From a Mon\nMessage-ID: <a\n" + b" x\n" * 350_000 + b"\nbody\n")
    start = time.perf_counter()
    [(message_id, _)] = list(iter_messages(path))
    assert time.perf_counter() - start < 1
    assert message_id.startswith("1 <a x x ") and len(message_id) == len("1 ") + MAX_HEADER_CHARS


def test_mbox_with_crlf_and_a_huge_message_in_the_middle(tmp_path):
    big = _big_attachment_message(5 << 20)
    mbox = (
        b"From a Mon\r\nSubject: one\r\n\r\nbody one\r\n\r\n"
        + b"From b Mon\n" + big + b"\n"
        + b"From c Mon\r\nSubject: three\r\n\r\nbody three\r\n"
    )
    path = tmp_path / "mixed.mbox"
    path.write_bytes(mbox)
    items = list(iter_messages(path, max_bytes=64 * 1024))
    assert [i for i, _ in items] == ["1", "2", "3"]
    assert items[0][1] == b"Subject: one\r\n\r\nbody one\r\n"
    assert len(items[1][1]) == 64 * 1024 and items[1][1] == big[: 64 * 1024]
    assert message_text(items[2][1]) == "three body three"


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_maildir_reads_cur_then_new_and_skips_tmp_and_hidden(tmp_path):
    box = tmp_path / "Maildir"
    _write(box / "new" / "1700000002.M1.host", SAMPLES["plain"][0])
    _write(box / "cur" / "1700000001.M2.host:2,S", SAMPLES["koi8r"][0])
    _write(box / "cur" / "1700000000.M3.host:2,", SAMPLES["html_only"][0])
    _write(box / "tmp" / "unfinished", b"Subject: partial\n\n")
    _write(box / "cur" / ".hidden", b"Subject: hidden\n\n")
    (box / ".Junk" / "cur").mkdir(parents=True)  # a Maildir++ subfolder is another source
    items = list(iter_messages(box))
    assert [i for i, _ in items] == ["cur/1700000000.M3.host:2,", "cur/1700000001.M2.host:2,S", "new/1700000002.M1.host"]
    assert [message_text(raw) for _, raw in items] == [SAMPLES[n][1] for n in ("html_only", "koi8r", "plain")]


def test_a_maildir_message_renamed_by_a_mail_client_while_the_box_is_read_keeps_its_line(tmp_path):
    """A client sets a flag (cur/X:2,S -> cur/X:2,RS) or moves a message it has shown from new/ to
    cur/ while the Maildir is read: both were left out, with no line and no warning."""
    box = tmp_path / "Maildir"
    _write(box / "cur" / "1.a.host:2,S", b"Subject: one\n\n1\n")
    _write(box / "cur" / "2.b.host:2,", b"Subject: two\n\n2\n")
    _write(box / "new" / "3.c.host", b"Subject: three\n\n3\n")
    _write(box / "tmp" / "4.d.host", b"Subject: unfinished\n\n")
    items = iter_messages(box)
    first = next(items)  # both folders are listed by now
    (box / "cur" / "2.b.host:2,").rename(box / "cur" / "2.b.host:2,RS")
    (box / "new" / "3.c.host").rename(box / "cur" / "3.c.host:2,")
    (box / "tmp" / "4.d.host").rename(box / "cur" / "4.d.host:2,")  # delivered meanwhile: not listed, no line
    rest = list(items)
    assert [first[0]] + [i for i, _ in rest] == ["cur/1.a.host:2,S", "cur/2.b.host:2,RS", "cur/3.c.host:2,"]
    assert [message_text(raw) for _, raw in [first, *rest]] == ["one 1", "two 2", "three 3"]


@pytest.mark.parametrize("listing", ["new", "cur"])
def test_a_maildir_message_moved_to_cur_between_the_listings_is_read_once(tmp_path, monkeypatch, listing):
    """Listed before it moved or after, never in neither listing (it was, when cur/ was listed first)."""
    box = tmp_path / "Maildir"
    _write(box / "new" / "1.a.host", b"Subject: one\n\n1\n")
    (box / "cur").mkdir()
    real = os.scandir

    def scandir(path="."):
        if Path(path) == box / listing and (box / "new" / "1.a.host").exists():  # the client moves it now
            (box / "new" / "1.a.host").rename(box / "cur" / "1.a.host:2,S")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert [i for i, _ in iter_messages(box)] == ["cur/1.a.host:2,S"]


def test_maildirs_in_a_folder_tree_are_read_as_maildirs(tmp_path):
    """~/Mail as mbsync keeps it: a Maildir per folder. Their tmp/ (a delivery being written) and
    the files beside cur/ (Dovecot's uidlist and indexes) were classified as messages."""
    root = tmp_path / "Mail"
    _write(root / "INBOX" / "cur" / "1.a.host:2,S", b"Subject: one\n\n1\n")
    _write(root / "INBOX" / "new" / "2.b.host", b"Subject: two\n\n2\n")
    _write(root / "INBOX" / "tmp" / "3.c.host", b"Subject: thr")
    _write(root / "INBOX" / "dovecot-uidlist", b"3 V1 N4\n")
    _write(root / "INBOX" / "Archive" / "cur" / "4.d.host:2,S", b"Subject: four\n\n4\n")
    (root / "INBOX" / "Archive" / "new").mkdir()
    (root / "INBOX" / "Archive" / "tmp").mkdir()
    _write(root / "corpus" / "new" / "5.eml", b"Subject: five\n\n5\n")  # no cur/ and tmp/: not a Maildir
    _write(root / "corpus" / "6.eml", b"Subject: six\n\n6\n")
    items = iter_messages(root)
    first = next(items)
    (root / "INBOX" / "new" / "2.b.host").rename(root / "INBOX" / "cur" / "2.b.host:2,S")  # a client read it
    assert [first[0]] + [i for i, _ in items] == [
        "INBOX/cur/1.a.host:2,S", "INBOX/cur/2.b.host:2,S", "INBOX/Archive/cur/4.d.host:2,S", "corpus/6.eml", "corpus/new/5.eml",
    ]


def test_folder_tree_in_path_order_without_links_or_hidden_files(tmp_path):
    root = tmp_path / "corpus"
    _write(root / "b" / "2.eml", SAMPLES["plain"][0])
    _write(root / "a" / "z" / "msg", SAMPLES["crlf_plain"][0])
    _write(root / "10", SAMPLES["whitespace"][0])
    _write(root / ".git" / "HEAD", b"ref: x\n")
    (root / "link").symlink_to(root / "10")
    items = list(iter_messages(root))
    assert [i for i, _ in items] == ["10", "a/z/msg", "b/2.eml"]
    assert items[1][1] == SAMPLES["crlf_plain"][0]


def test_a_maildir_folder_that_is_a_link_is_skipped_as_a_linked_file_is(tmp_path):
    elsewhere = tmp_path / "secret"
    _write(elsewhere / "1.host", SAMPLES["plain"][0])
    box = tmp_path / "INBOX"
    _write(box / "new" / "2.host", SAMPLES["crlf_plain"][0])
    (box / "tmp").mkdir()
    (box / "cur").symlink_to(elsewhere, target_is_directory=True)
    assert [i for i, _ in iter_messages(box)] == ["new/2.host"]
    assert [i for i, _ in iter_messages(tmp_path / "INBOX" / "..")] == ["INBOX/new/2.host", "secret/1.host"]


def test_a_file_that_cannot_be_read_has_its_place_and_the_read_goes_on(tmp_path):
    """A message file replaced by a folder between the listing and the read (as a permission
    error would): it comes as Unreadable in its place, and the messages after it still come."""
    root = tmp_path / "corpus"
    for name in ("1.eml", "2.eml", "3.eml"):
        _write(root / name, SAMPLES["plain"][0])
    items = iter_messages(root)
    first = next(items)  # the folder is listed by now
    (root / "2.eml").unlink()
    (root / "2.eml").mkdir()
    assert [first, *items] == [("1.eml", SAMPLES["plain"][0]), ("2.eml", Unreadable("Is a directory")), ("3.eml", SAMPLES["plain"][0])]
    assert extract(Unreadable("Permission denied")) == MailText("", True, False, ("unreadable file: Permission denied",))


def test_a_link_or_a_pipe_put_in_place_of_a_listed_file_is_not_followed_or_waited_for(tmp_path):
    """A link planted after the listing was followed (here to a file outside the source, whose text
    prepare would copy into the training data), and a pipe waited for a writer for ever."""
    root = tmp_path / "corpus"
    for name in ("1.eml", "2.eml", "3.eml"):
        _write(root / name, SAMPLES["plain"][0])
    _write(tmp_path / "secret", b"Subject: private\n\nnot mail\n")
    items = iter_messages(root)
    first = next(items)  # the folder is listed by now
    (root / "2.eml").unlink()
    (root / "2.eml").symlink_to(tmp_path / "secret")
    (root / "3.eml").unlink()
    os.mkfifo(root / "3.eml")
    read: list = []
    reader = threading.Thread(target=lambda: read.extend(items), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # opened the pipe and waits: give it a writer so the thread ends
        os.close(os.open(root / "3.eml", os.O_WRONLY | os.O_NONBLOCK))
    assert [first, *read] == [
        ("1.eml", SAMPLES["plain"][0]),
        ("2.eml", Unreadable("a symbolic link now, not followed")),
        ("3.eml", Unreadable("not a regular file now (a device, pipe or socket)")),
    ]


def _failing_scandir(monkeypatch, failing: Path):
    real = os.scandir

    def scandir(path="."):
        if Path(path) == failing:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("layout", ["tree", "maildir"])
def test_a_folder_that_cannot_be_listed_is_a_warning_naming_it(tmp_path, monkeypatch, layout):
    root = tmp_path / "box"
    sub = root / ("a" if layout == "tree" else "new")
    _write(sub / "1", SAMPLES["plain"][0])
    _write(root / ("b" if layout == "tree" else "cur") / "2", SAMPLES["plain"][0])
    _failing_scandir(monkeypatch, sub)
    with pytest.warns(SpamtuneWarning, match=f"^cannot list {sub}: Permission denied; its messages are left out$"):
        items = list(iter_messages(root))
    assert [i for i, _ in items] == ["b/2" if layout == "tree" else "cur/2"]


def test_a_source_folder_that_cannot_be_listed_is_an_error(tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    _write(root / "1.eml", SAMPLES["plain"][0])
    _failing_scandir(monkeypatch, root)
    with pytest.raises(SpamtuneError, match=f"^cannot read {root}: Permission denied$"):
        list(iter_messages(root))


def test_single_message_file(tmp_path):
    path = tmp_path / "one.eml"
    path.write_bytes(SAMPLES["alternative"][0])
    assert list(iter_messages(path)) == [("one.eml", SAMPLES["alternative"][0])]


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SpamtuneError, match="mail source not found"):
        list(iter_messages(tmp_path / "nope"))


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc: a file whose reads fail")
def test_a_read_that_fails_midway_is_a_clear_error():
    with pytest.raises(SpamtuneError, match="cannot read /proc/self/mem: Input/output error"):
        list(iter_messages("/proc/self/mem"))


def test_parse_source():
    assert parse_source("spam=/var/mail/junk") == MailSource("spam", __import__("pathlib").Path("/var/mail/junk"))
    assert parse_source("ham=a=b").path.name == "a=b"
    for bad in ("spam", "=x", "spam="):
        with pytest.raises(SpamtuneUsageError):
            parse_source(bad)
    assert parse_source("Spam é=x").label == "Spam é"
    for bad in ("sp\nam=x", "sp\tam=x", "sp\ram=x", "sp\x1b[31mam=x"):
        with pytest.raises(SpamtuneUsageError, match="label is printable text on one line"):
            parse_source(bad)
