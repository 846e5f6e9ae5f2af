"""Crafted mail messages, each written for one case, with the text ``spamtune.mail`` must extract.

Every message is made up here (no external corpus). ``SAMPLES`` maps a case name to
``(raw bytes, expected text, whether the message counts as damaged)``; the filter tests reuse
the raw bytes to check that ``spamtune filter`` leaves every byte in place.
"""

from __future__ import annotations

import base64
import quopri


def _lf(text: str) -> bytes:
    return text.encode("utf-8")


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def _b64(data: bytes, width: int = 76) -> bytes:
    encoded = base64.b64encode(data)
    return b"\n".join(encoded[i : i + width] for i in range(0, len(encoded), width))


PLAIN = _lf(
    "From: Ann <ann@example.org>\nTo: bob@example.org\nSubject: Lunch tomorrow?\n"
    "Message-ID: <plain-1@example.org>\n\nAre we still on for lunch?\n\nAnn\n"
)

ALTERNATIVE = _lf(
    "From: shop@example.com\nSubject: Your order\nMIME-Version: 1.0\n"
    'Content-Type: multipart/alternative; boundary="alt-1"\n\n'
    "This is a multi-part message in MIME format.\n"
    "--alt-1\nContent-Type: text/plain; charset=utf-8\n\nYour order has shipped.\n"
    "--alt-1\nContent-Type: text/html; charset=utf-8\n\n<p>Your <b>order</b> has shipped.</p>\n"
    "--alt-1--\n"
)

ALTERNATIVE_EMPTY_PLAIN = _lf(
    "Subject: Newsletter\nContent-Type: multipart/alternative; boundary=zz\n\n"
    "--zz\nContent-Type: text/plain\n\n   \n"
    "--zz\nContent-Type: text/html\n\n<h1>News</h1><p>Big sale</p>\n--zz--\n"
)

HTML_ONLY = _lf(
    "Subject: You won!\nContent-Type: text/html; charset=utf-8\n\n"
    "<!DOCTYPE html><html><head><title>ignored?</title>"
    "<style>body { color: red }</style><script>var x = '<p>no</p>';</script></head>"
    "<body><!-- tracking comment --><p>Claim your&nbsp;<a href='http://x.example/'>free prize</a> now&hellip;</p>"
    "<p>Caf&eacute; &amp; b<b>a</b>r &#8364;5</p><div>line<br>break</div></body></html>\n"
)

# The classic trick: a harmless plain version, and the pitch in the HTML one that mail clients show.
ALTERNATIVE_PITCH_IN_HTML = _lf(
    "Subject: hi\nContent-Type: multipart/alternative; boundary=a\n\n"
    "--a\nContent-Type: text/plain\n\nHi, see you tomorrow.\n"
    "--a\nContent-Type: text/html\n\n<p>Cheap <b>pills</b>, no prescription: <a href='http://x.example/'>order now</a></p>\n"
    "--a--\n"
)

# Normal mail: the plain version written from the HTML, links written out, an image named; the
# same words otherwise, so the plain version is read as it always was.
MINUTES_PLAIN = (
    "Hi all,\n\nthe minutes of Monday's meeting are in the shared folder\n<https://files.example.org/minutes/2026-11-23.pdf>.\n"
    "Next meeting: Thursday at ten, room B.\n\nThanks, Ann\n[image: logo]\n"
)
ALTERNATIVE_SAME_WORDS = _lf(
    "Subject: Minutes\nContent-Type: multipart/alternative; boundary=a\n\n"
    f"--a\nContent-Type: text/plain; charset=utf-8\n\n{MINUTES_PLAIN}"
    "--a\nContent-Type: text/html; charset=utf-8\n\n"
    "<div>Hi all,</div><div><br></div><div>the minutes of Monday&#39;s meeting are in the "
    "<a href='https://files.example.org/minutes/2026-11-23.pdf'>shared folder</a>.</div>"
    "<div>Next meeting: Thursday at ten, room B.</div><div>Thanks, Ann</div><img alt='logo' src='cid:1'>\n"
    "--a--\n"
)

# The pitch in an HTML version inside multipart/related inside the alternative (HTML with its images).
ALTERNATIVE_PITCH_IN_RELATED = _lf(
    "Subject: hi\nContent-Type: multipart/alternative; boundary=a\n\n"
    "--a\nContent-Type: text/plain\n\nHi, see you tomorrow.\n"
    "--a\nContent-Type: multipart/related; boundary=r\n\n"
    "--r\nContent-Type: text/html\n\n<p>Cheap pills, order now</p><img src='cid:p'>\n"
    "--r\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n--r--\n"
    "--a--\n"
)

# An HTML version that shows nothing (markup only, an unclosed comment): the plain version is read.
ALTERNATIVE_EMPTY_HTML = _lf(
    "Subject: note\nContent-Type: multipart/alternative; boundary=a\n\n"
    "--a\nContent-Type: text/plain\n\nThe plain words.\n"
    "--a\nContent-Type: text/html\n\n<html><body><!-- <p>never closed</p>\n"
    "--a--\n"
)

# Clients show the last version they can: a second HTML version after one that matches the plain.
ALTERNATIVE_TWO_HTML = _lf(
    "Subject: hi\nContent-Type: multipart/alternative; boundary=a\n\n"
    "--a\nContent-Type: text/plain\n\nHi, see you tomorrow.\n"
    "--a\nContent-Type: text/html\n\n<p>Hi, see you tomorrow.</p>\n"
    "--a\nContent-Type: text/html\n\n<p>Cheap pills, order now</p>\n"
    "--a--\n"
)

# Odd charsets in both versions: the plain in KOI8-R, the HTML in an unknown charset (read as UTF-8).
ALTERNATIVE_ODD_CHARSETS = (
    b"Subject: odd\nContent-Type: multipart/alternative; boundary=a\n\n"
    b"--a\nContent-Type: text/plain; charset=koi8-r\n\n" + "Привет, как дела?\n".encode("koi8-r")
    + b"--a\nContent-Type: text/html; charset=x-made-up\n\n<p>" + "Дешёвые таблетки".encode() + b"</p>\n"
    b"--a--\n"
)

HTML_IN_RELATED = _lf(
    "Subject: Offer\nContent-Type: multipart/alternative; boundary=o\n\n"
    "--o\nContent-Type: multipart/related; boundary=r\n\n"
    "--r\nContent-Type: text/html\n\n<p>Cheap <i>pills</i></p>\n"
    "--r\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n--r--\n"
    "--o--\n"
)

BASE64_UTF8 = (
    b"Subject: =?utf-8?B?w4ljaGFudGlsbG9u?=\nMIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
    + _b64("Voilà, l'échantillon demandé.\n".encode())
    + b"\n"
)

QUOTED_PRINTABLE = (
    b"Subject: =?iso-8859-1?Q?R=E9union?=\nContent-Type: text/plain; charset=iso-8859-1\n"
    b"Content-Transfer-Encoding: quoted-printable\n\n"
    + quopri.encodestring("La réunion est déplacée à jeudi, une très longue ligne qui doit être coupée par le "
                          "codage quoted-printable avec des sauts doux.\n".encode("iso-8859-1"))
)

LATIN1_8BIT = (
    b"Subject: Caf\xe9\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n"
    b"Un caf\xe9 cr\xe8me, s'il vous pla\xeet.\n"
)

KOI8R = (
    b"Subject: =?koi8-r?B?8NLJ18XU?=\nContent-Type: text/plain; charset=koi8-r\nContent-Transfer-Encoding: 8bit\n\n"
    + "Привет, как дела?\n".encode("koi8-r")
)

UNKNOWN_CHARSET_UTF8 = _lf(
    "Subject: odd charset\nContent-Type: text/plain; charset=x-made-up\n\nnaïve café\n"
)

UNKNOWN_CHARSET_BINARY = (
    b"Subject: odd bytes\nContent-Type: text/plain; charset=x-made-up\n\nab\xff\xfecd\n"
)

WRONG_CHARSET = (  # says us-ascii, holds UTF-8
    b"Subject: wrong label\nContent-Type: text/plain; charset=us-ascii\n\n\xc3\xa0 bient\xc3\xb4t\n"
)

NON_TEXT_CHARSET = _lf(  # a codec that is not a text encoding must not be applied
    "Subject: zipped?\nContent-Type: text/plain; charset=zlib\n\nplain words\n"
)

NO_CHARSET_8BIT = b"Subject: no charset\n\nd\xe9j\xe0 vu\n"

BROKEN_BOUNDARY = _lf(
    "Subject: broken\nContent-Type: multipart/mixed; boundary=good\n\n"
    "--good\nContent-Type: text/plain\n\nfirst part\n--bad\nContent-Type: text/plain\n\nstill here\n"
)

MISSING_BOUNDARY_PARAM = _lf(
    "Subject: no boundary\nContent-Type: multipart/mixed\n\nsome text without parts\n"
)

ATTACHMENTS_ONLY = _lf(
    "Subject: invoice\nContent-Type: multipart/mixed; boundary=m\n\n"
    "--m\nContent-Type: application/pdf; name=inv.pdf\nContent-Disposition: attachment; filename=inv.pdf\n"
    "Content-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n"
    "--m\nContent-Type: text/plain; name=notes.txt\nContent-Disposition: attachment; filename=notes.txt\n\n"
    "notes shown inline\n--m--\n"
)

# A message forwarded as an attachment, and no other body: the forwarded message is read.
FORWARDED_AS_ATTACHMENT_ONLY = _lf(
    "Subject: Fwd: look\nContent-Type: multipart/mixed; boundary=m\n\n"
    "--m\nContent-Type: message/rfc822\nContent-Disposition: attachment; filename=look.eml\n\n"
    "Subject: Great deal\n\nBuy now!\n--m--\n"
)

# A text attachment beside a body: the body is the message, the attachment (a log here) is skipped.
TEXT_ATTACHMENT_BESIDE_BODY = _lf(
    "Subject: the log\nContent-Type: multipart/mixed; boundary=m\n\n"
    "--m\nContent-Type: text/plain\n\nThe log from last night.\n"
    "--m\nContent-Type: text/plain; name=run.log\nContent-Disposition: attachment; filename=run.log\n\n"
    "ERROR disk full\n--m--\n"
)

# The only text of a message, sent as an attachment (which mail clients display inline).
ONLY_TEXT_AS_ATTACHMENT = _lf(
    "Subject: hello\nContent-Type: text/plain; charset=utf-8\nContent-Disposition: attachment; filename=a.txt\n\n"
    "Claim your free cruise now.\n"
)

# The same, as an HTML attachment beside an image: its visible text.
ONLY_HTML_AS_ATTACHMENT = _lf(
    "Subject: invoice\nContent-Type: multipart/mixed; boundary=m\n\n"
    "--m\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n"
    "--m\nContent-Type: text/html\nContent-Disposition: attachment; filename=invoice.html\n\n"
    "<form><p>Confirm your <b>password</b></p></form>\n--m--\n"
)

TEXT_WITH_ATTACHMENT = _lf(
    "Subject: photos\nContent-Type: multipart/mixed; boundary=m\n\n"
    "--m\nContent-Type: text/plain\n\nHere are the photos.\n"
    "--m\nContent-Type: image/jpeg\nContent-Transfer-Encoding: base64\n\n/9j/4AAQSkZJRg==\n"
    "--m\nContent-Type: text/plain\n\nAnd one more line.\n--m--\n"
)

EMPTY_BODY = _lf("Subject: \nFrom: a@example.org\n\n")

NO_SUBJECT = _lf("From: a@example.org\n\nonly a body\n")

HEADERS_ONLY_NO_NEWLINE = b"Subject: just a header"

NOTHING = b""

CRLF_PLAIN = _crlf(_lf("Subject: crlf\nFrom: a@example.org\n\nline one\nline two\n"))

CRLF_MULTIPART = _crlf(ALTERNATIVE)

EIGHT_BIT_HEADER_UTF8 = "Subject: Grüße aus Köln\n\nhallo\n".encode()

EIGHT_BIT_HEADER_LATIN1 = b"Subject: Gr\xfc\xdfe\nFrom: J\xf6rg <j@example.org>\n\nhallo\n"

NESTED_RFC822 = _lf(
    "Subject: Fwd: deal\nContent-Type: multipart/mixed; boundary=outer\n\n"
    "--outer\nContent-Type: text/plain\n\nSee the forwarded mail.\n"
    "--outer\nContent-Type: message/rfc822\n\n"
    "Subject: Great deal\nContent-Type: multipart/alternative; boundary=inner\n\n"
    "--inner\nContent-Type: text/plain\n\nBuy now!\n--inner\nContent-Type: text/html\n\n<p>Buy <b>now</b>!</p>\n--inner--\n"
    "--outer--\n"
)

TRUNCATED_BASE64 = (
    b"Subject: cut\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
    + base64.b64encode(b"hello there, friend")[:-3]
    + b"\n"
)

# Base64 encoded line by line, each with its padding: decoders that read group by group show it all.
BASE64_PADDED_MIDWAY = (
    b"Subject: hi\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
    + base64.b64encode(b"Hi") + b"\n" + base64.b64encode(b" claim your prize") + b"\n"
)

# Soft line breaks with the blanks transport adds after the "=": decoders delete them (RFC 2045).
QP_BLANKS_AFTER_SOFT_BREAK = (
    b"Subject: s\nContent-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n"
    b"cheap V= \niagra, W=\t\r\nIN=20now   \n"
)

BAD_BASE64_CHARS = (
    b"Subject: noise\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
    + b"aGVsbG8g!!d29ybGQ=\n"
)

# RFC 2045's Content-Transfer-Encoding may carry a comment; a reader that drops it decodes the part.
ENCODING_WITH_COMMENT = (
    b"Subject: offer\nContent-Type: multipart/mixed; boundary=c\n\n"
    b"--c\nContent-Type: text/plain\nContent-Transfer-Encoding: base64 (the text)\n\n"
    + base64.b64encode(b"Claim your free cruise now.")
    + b"\n--c\nContent-Type: text/plain\nContent-Transfer-Encoding: quoted-printable (soft breaks)\n\n"
    b"Call =3D=\n free.\n--c--\n"
)

# A codec that turns bytes into half a UTF-16 surrogate pair, which no UTF-8 file can hold.
SURROGATE_CHARSET = b"Subject: s\nContent-Type: text/plain; charset=unicode-escape\n\nWIN \\ud800 now\n"

# Characters a mail reader does not show, between the letters of words the reader shows whole.
INVISIBLE_CHARACTERS = _lf(
    "Subject: F\u200bR\u00adE\u2060E\nContent-Type: text/html; charset=utf-8\n\n"
    "<p>W&#8203;I\u200cN c\ufeffa\u200ds\u202eh n\u034fo\u061cw f\U000e0066r\ufe0fe\U000e0100e\U000e007f</p>\n"
)

# One 8-bit byte in a base64 part, in a charset whose codec raises on it even when told to replace.
BASE64_8BIT_ODD_CHARSET = (
    b"Subject: hello\nContent-Type: text/plain; charset=idna\nContent-Transfer-Encoding: base64\n\n"
    + base64.b64encode(b"Claim your free cruise now.")
    + b"\xa0\n"
)

# Letters in compatibility forms that a reader shows as the plain letters.
COMPATIBILITY_LETTERS = _lf(
    "Subject: \U0001d405\U0001d411\U0001d404\U0001d404 money\nContent-Type: text/plain; charset=utf-8\n\n"
    "\uff37\uff29\uff2e now, \ufb01nal o\ufb00er\u00a0today\n"
)

MALFORMED_HEADER = _lf(
    "Subject: fine\nThis line is not a header\nFrom: x@example.org\n\nthe body\n"
)

LONG_FOLDED_SUBJECT = _lf(
    "Subject: a subject that goes on\n and on over\n\tthree lines\n\nbody\n"
)

ENCODED_WORDS_MIXED = _lf(
    "Subject: =?utf-8?Q?Hello_w=C3=B6rld?= and =?iso-8859-1?B?Q2Fm6Q==?= =?x-bogus?Q?caf=E9?=\n\nb\n"
)

MBOX_FROM_LINE = _lf("From sender@example.org Mon Nov 23 10:00:00 2026\nSubject: with envelope\n\nbody text\n")

WHITESPACE = _lf("Subject:   many\t  spaces  \n\n  a\t\tb\n\n\n   c  \n")

DIGEST_NESTED_MULTIPART = _lf(
    "Subject: nested\nContent-Type: multipart/mixed; boundary=a\n\n"
    "--a\nContent-Type: multipart/mixed; boundary=b\n\n"
    "--b\nContent-Type: text/plain\n\none\n--b\nContent-Type: text/html\n\n<b>two</b>\n--b--\n"
    "--a\nContent-Type: text/plain\nContent-Disposition: inline\n\nthree\n--a--\n"
)

BINARY_GARBAGE = bytes(range(256)) * 4

# Salad: innocent words hidden in the HTML by the inline means mail clients honour, to drown the
# pitch, with the markup as sloppy as such mail comes (an unclosed span, a stray </div>, a
# paragraph closed by the next one, upper-case styles, !important).
HIDDEN_SALAD = _lf(
    "Subject: Your account\nContent-Type: text/html; charset=utf-8\n\n"
    "<html><body>"
    '<div style="display:none;max-height:0px;overflow:hidden;mso-hide:all">meeting agenda minutes</div>'
    '<table width="600"><tr><td style="font-size:14px;line-height:20px">'
    "<p>Cheap <b>meds</b>, no prescription.</p>"
    '<div style="DISPLAY: None !important">garden recipe<span>weekend family</div></div>'
    "Order today."
    '<span style="font-size:0px">invoice report schedule</span>'
    '<div style="font-size:0">lunch <span style="font-size:12px">80% off</span> tomorrow</div>'
    '<p style="opacity:0">soccer practice<p>Reply STOP to end.'
    '<div hidden>thanks again</div>'
    '<span style="visibility:hidden">see you <b style="visibility:visible">Friday</b> then</span>'
    '<div style="max-height:0;overflow:hidden">project update</div>'
    '<span style="font-size:0.9em">Unsubscribe</span>'
    "</td></tr></table></body></html>\n"
)

# The pitch in a remote image, whose alt text mail clients show while they block the image; the
# alt text of a hidden image is not shown.
IMAGE_PITCH = _lf(
    "Subject: Special offer\nContent-Type: text/html; charset=utf-8\n\n"
    "<p>Hello,<a href='http://x.example/'><img src='http://x.example/pitch.png' "
    "alt='Viagra 90% off, order now'/></a>Best regards"
    "<img src='http://x.example/t.gif' width='1' height='1' alt=''>"
    "<img src='http://x.example/s.png' style='display:none' alt='weather forecast'></p>\n"
)

# A harmless plain version, and an HTML one that hides the same words beside the pitch: read with
# the hidden words, the HTML shares nine tenths of its words with the plain version, which was read
# in its place; what a reader sees of the HTML is the pitch, and that is read.
_SALAD = (
    "The quarterly report covers revenue, hiring, the office move, travel budgets, parking, the "
    "holiday rota, printer supplies, security badges, onboarding checklists and the new schedule for "
    "our weekly team meeting next Thursday afternoon in room four, with coffee and cake at three."
)
ALTERNATIVE_SALAD_HIDDEN_IN_HTML = _lf(
    "Subject: hi\nContent-Type: multipart/alternative; boundary=a\n\n"
    f"--a\nContent-Type: text/plain\n\n{_SALAD}\n"
    "--a\nContent-Type: text/html\n\n"
    f'<p>Cheap pills, order now</p><div style="display:none">{_SALAD}</div>\n'
    "--a--\n"
)

SAMPLES: dict[str, tuple[bytes, str, bool]] = {
    "plain": (PLAIN, "Lunch tomorrow? Are we still on for lunch? Ann", False),
    "alternative": (ALTERNATIVE, "Your order Your order has shipped.", False),
    "alternative_empty_plain": (ALTERNATIVE_EMPTY_PLAIN, "Newsletter News Big sale", False),
    "html_only": (HTML_ONLY, "You won! Claim your free prize now… Café & bar €5 line break", False),
    "html_in_related": (HTML_IN_RELATED, "Offer Cheap pills", False),
    "alternative_pitch_in_html": (ALTERNATIVE_PITCH_IN_HTML, "hi Cheap pills, no prescription: order now", False),
    "alternative_same_words": (ALTERNATIVE_SAME_WORDS, " ".join(f"Minutes {MINUTES_PLAIN}".split()), False),
    "alternative_pitch_in_related": (ALTERNATIVE_PITCH_IN_RELATED, "hi Cheap pills, order now", False),
    "alternative_empty_html": (ALTERNATIVE_EMPTY_HTML, "note The plain words.", False),
    "alternative_two_html": (ALTERNATIVE_TWO_HTML, "hi Cheap pills, order now", False),
    "alternative_odd_charsets": (ALTERNATIVE_ODD_CHARSETS, "odd Дешёвые таблетки", True),
    "base64_utf8": (BASE64_UTF8, "Échantillon Voilà, l'échantillon demandé.", False),
    "quoted_printable": (
        QUOTED_PRINTABLE,
        "Réunion La réunion est déplacée à jeudi, une très longue ligne qui doit être coupée par le codage "
        "quoted-printable avec des sauts doux.",
        False,
    ),
    "latin1_8bit": (LATIN1_8BIT, "Café Un café crème, s'il vous plaît.", True),
    "koi8r": (KOI8R, "Привет Привет, как дела?", False),
    "unknown_charset_utf8": (UNKNOWN_CHARSET_UTF8, "odd charset naïve café", True),
    "unknown_charset_binary": (UNKNOWN_CHARSET_BINARY, "odd bytes ab\ufffd\ufffdcd", True),
    "wrong_charset": (WRONG_CHARSET, "wrong label à bientôt", True),
    "non_text_charset": (NON_TEXT_CHARSET, "zipped? plain words", True),
    "no_charset_8bit": (NO_CHARSET_8BIT, "no charset déjà vu", False),
    "broken_boundary": (BROKEN_BOUNDARY, "broken first part --bad Content-Type: text/plain still here", True),
    "missing_boundary_param": (MISSING_BOUNDARY_PARAM, "no boundary some text without parts", True),
    "attachments_only": (ATTACHMENTS_ONLY, "invoice notes shown inline", False),
    "text_attachment_beside_body": (TEXT_ATTACHMENT_BESIDE_BODY, "the log The log from last night.", False),
    "only_text_as_attachment": (ONLY_TEXT_AS_ATTACHMENT, "hello Claim your free cruise now.", False),
    "forwarded_as_attachment_only": (FORWARDED_AS_ATTACHMENT_ONLY, "Fwd: look Great deal Buy now!", False),
    "only_html_as_attachment": (ONLY_HTML_AS_ATTACHMENT, "invoice Confirm your password", False),
    "text_with_attachment": (TEXT_WITH_ATTACHMENT, "photos Here are the photos. And one more line.", False),
    "empty_body": (EMPTY_BODY, "", False),
    "no_subject": (NO_SUBJECT, "only a body", False),
    "headers_only_no_newline": (HEADERS_ONLY_NO_NEWLINE, "just a header", False),
    "nothing": (NOTHING, "", False),
    "crlf_plain": (CRLF_PLAIN, "crlf line one line two", False),
    "crlf_multipart": (CRLF_MULTIPART, "Your order Your order has shipped.", False),
    "eight_bit_header_utf8": (EIGHT_BIT_HEADER_UTF8, "Grüße aus Köln hallo", False),
    "eight_bit_header_latin1": (EIGHT_BIT_HEADER_LATIN1, "Grüße hallo", True),
    "nested_rfc822": (NESTED_RFC822, "Fwd: deal See the forwarded mail. Great deal Buy now!", False),
    "truncated_base64": (TRUNCATED_BASE64, "cut hello there, frien", True),
    "base64_padded_midway": (BASE64_PADDED_MIDWAY, "hi Hi claim your prize", True),
    "qp_blanks_after_soft_break": (QP_BLANKS_AFTER_SOFT_BREAK, "s cheap Viagra, WIN now", False),
    "bad_base64_chars": (BAD_BASE64_CHARS, "noise hello world", True),
    "encoding_with_comment": (ENCODING_WITH_COMMENT, "offer Claim your free cruise now. Call = free.", False),
    "surrogate_charset": (SURROGATE_CHARSET, "s WIN \ufffd now", True),
    "invisible_characters": (INVISIBLE_CHARACTERS, "FREE WIN cash now free", False),
    "base64_8bit_odd_charset": (BASE64_8BIT_ODD_CHARSET, "hello Claim your free cruise now.", True),
    "compatibility_letters": (COMPATIBILITY_LETTERS, "FREE money WIN now, final offer today", False),
    "malformed_header": (MALFORMED_HEADER, "fine This line is not a header From: x@example.org the body", True),
    "long_folded_subject": (LONG_FOLDED_SUBJECT, "a subject that goes on and on over three lines body", False),
    "encoded_words_mixed": (ENCODED_WORDS_MIXED, "Hello wörld and Cafécaf\ufffd b", True),
    "mbox_from_line": (MBOX_FROM_LINE, "with envelope body text", False),
    "whitespace": (WHITESPACE, "many spaces a b c", False),
    "digest_nested_multipart": (DIGEST_NESTED_MULTIPART, "nested one two three", False),
    "hidden_salad": (
        HIDDEN_SALAD,
        "Your account Cheap meds, no prescription. Order today. 80% off Reply STOP to end. Friday Unsubscribe",
        False,
    ),
    "image_pitch": (IMAGE_PITCH, "Special offer Hello, Viagra 90% off, order now Best regards", False),
    "alternative_salad_hidden_in_html": (ALTERNATIVE_SALAD_HIDDEN_IN_HTML, "hi Cheap pills, order now", False),
}
