"""RFC 822 mail in: the text the model sees for a message (the readers of mail folders and
mbox files are ``spamtune.mail_sources``).

The text of a message (``message_text``) is its decoded Subject followed by its body text, with
all whitespace collapsed to single spaces:

- the body is the message's ``text/plain`` content, or, where a part offers only HTML, the text
  that HTML shows (``spamtune.mail_html``): read by a real parser (``html.parser``), scripts,
  styles and comments dropped, entities decoded, the text of links and the alt text of images
  kept, the text of elements hidden by their inline style, a ``<style>`` sheet's rules or their
  ``hidden`` attribute dropped, and text of the colour of its background, a tag or comment left
  open at the end dropped;
- in ``multipart/alternative`` the text is that of the version mail clients show, the last HTML
  one (or a multipart such as ``related`` holding it) that shows any words; the plain-text
  version is read instead where it says the same (nine tenths of their distinct words shared,
  links aside) or where no HTML version shows a word. The inline text parts of other multiparts
  (``mixed``, ``related``, ...) follow one another in order;
- base64 and quoted-printable are decoded and the declared charset applied; an unknown charset
  is read as UTF-8, a wrong one (bytes it cannot decode) as UTF-8 if they are valid UTF-8, else
  with U+FFFD replacements; 8-bit bytes in headers are read as UTF-8, else as Windows-1252;
- attachments (a ``Content-Disposition: attachment``, or any non-text part) are skipped, but for
  the ``text/plain``, ``text/html`` and ``message/rfc822`` attachments of a message with no other
  body text, which mail clients display inline; a forwarded ``message/rfc822`` contributes its own
  Subject and body.

Parsing never raises: whatever the standard library's parser reports as a defect (a missing
boundary, bad base64, a malformed header) and every charset fallback marks the result
``damaged``; callers count damaged and empty messages. A message the parser or the walk gives
up on (an error of the standard library's) gives its Subject and raw body instead. Only the
first ``MAX_MESSAGE_BYTES`` of a message are parsed, so a 20 MB attachment costs a bounded
amount of memory and time, the headers the text reads (Subject and the MIME ones) only to their
first ``MAX_HEADER_CHARS``, and only the first ``MAX_PARTS`` MIME parts: the rest of a message of
more parts is read as raw text (``too many parts``).
"""

from __future__ import annotations

import base64
import codecs
import functools
import itertools
import quopri
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.feedparser import BytesFeedParser
from email.message import EmailMessage, Message
from email.policy import EmailPolicy

from spamtune.mail_html import visible_text

# The way a message is read into text, numbered. ``prepare`` records it with splits read from
# mail, and training warns about splits read by another version: a model trained on text read one
# way and shown mail read another (by ``predict --mail``, ``filter``, ``serve``) is tested on
# something it never saw. Raised whenever a message's text changes: 2 reads the HTML version of
# ``multipart/alternative`` unless the plain one says the same, and attached text bodies; 3 drops
# HTML text hidden by inline styles and reads images' alt text; 4 also drops text hidden by the
# rules of ``<style>`` sheets and text of the colour of its background; 5 drops the document's
# <title> and what browsers show nothing of (datalists, noembed, noframes), and all the characters
# that renderers draw as nothing (variation selectors, tag characters, ...), and parts every block
# element (<center>, <details>, ...) from the words around it, reads base64 on past padding in
# its middle and takes "= " at the end of a quoted-printable line for a soft break.
READING_VERSION = 5

# Enough for any real text part (long HTML newsletters run to a few hundred KB); the rest of a
# larger message is attachments, which the text skips anyway.
MAX_MESSAGE_BYTES = 1 << 20

# The standard library's header parser is slow (about 5 ms per KB) and, on some headers, grows with
# the square of their length: an 800 KB Subject of encoded words took tens of GB, a Content-Type
# of many parameters minutes of CPU. Each header is cut to MAX_HEADER_CHARS before it is parsed
# (real Subject and MIME headers are far shorter; past that length a header cannot matter to a
# text the model reads a few hundred words of), and parsed once however often it is asked for
# (the parser and the text each ask for a part's Content-Type about nine times).
MAX_HEADER_CHARS = 1024


class _BoundedHeaders(EmailPolicy):
    """``policy.default`` with each header value cut to ``MAX_HEADER_CHARS`` and parsed once."""

    def header_fetch_parse(self, name, value):
        if hasattr(value, "name"):  # already a header object
            return value
        return _parsed_header(name, value[:MAX_HEADER_CHARS])


@functools.lru_cache(maxsize=8)  # a parsed header can take 1,000 times its length
def _parsed_header(name: str, value: str):
    return policy.default.header_fetch_parse(name, value)  # header objects are immutable: shared safely


_POLICY = _BoundedHeaders()

# Every MIME part costs the parser and then the text a parse of its Content-Type (about 5 ms for
# the 1,024 characters a header is cut to), so a 1 MiB message of 960 parts, each with its own
# long Content-Type, took 7-15 s. Only a message's first MAX_PARTS parts are parsed and walked
# (about 1 s at worst): real mail has a handful, a message with 50 photos attached 52, a MIME
# digest of 30 list messages about 90. The rest of the message is read as raw text, MIME lines
# and all, so that 100 empty parts cannot hide the text after them. Each part and each
# forwarded message counts.
MAX_PARTS = 100
_LINE_END = re.compile(rb"\r\n?|\n")


def _parse(raw: bytes) -> tuple[Message, int | None]:
    """``raw`` parsed to its first ``MAX_PARTS`` parts, and where in ``raw`` the parse stopped
    (None when it read the whole message)."""
    created = -1  # the parser makes one message first, to try the factory out

    def factory(policy):
        nonlocal created
        created += 1
        return EmailMessage(policy=policy)

    parser = BytesFeedParser(factory, policy=_POLICY)
    line_ends = (match.end() for match in _LINE_END.finditer(raw))
    pos = 0
    while pos < len(raw):
        # The parser starts at most one part per line, so a group of lines this long cannot pass
        # the limit unseen; near the limit it is one line, and the parse stops at that line.
        lines = max(1, MAX_PARTS - created - 1)
        end = next(itertools.islice(line_ends, lines - 1, None), len(raw))
        parser.feed(raw[pos:end])
        if created > MAX_PARTS:
            return parser.close(), pos
        pos = end
    return parser.close(), None


@dataclass(frozen=True)
class MailText:
    """What ``extract`` found in one message.

    ``text`` is what the model sees; ``damaged`` says the parser reported defects or a charset
    had to fall back (``problems`` names them); ``truncated`` says only the message's start was
    read; ``attachments`` lists the content types of the skipped parts.
    """

    text: str
    damaged: bool = False
    truncated: bool = False
    problems: tuple[str, ...] = ()
    attachments: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.text


# The label ``predict --mail`` gives a message whose file could not be read: it has no verdict,
# but keeps its line. ``prepare`` refuses a class of this name, which no line could tell from it.
UNREADABLE_LABEL = "error"


@dataclass(frozen=True)
class Unreadable:
    """What ``iter_messages`` gives in place of a message file it listed but could not read
    (``reason``: ``Permission denied``, ``Is a directory``, ...)."""

    reason: str


def message_text(raw: bytes | Message | Unreadable) -> str:
    """The text the model sees for one message (raw bytes or a parsed message); never raises."""
    return extract(raw).text


def extract(raw: bytes | Message | Unreadable, max_bytes: int = MAX_MESSAGE_BYTES) -> MailText:
    """``message_text`` with what went wrong on the way: see ``MailText``. Never raises."""
    if isinstance(raw, Unreadable):
        return MailText("", damaged=True, problems=(f"unreadable file: {raw.reason}",))
    truncated = False
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) > max_bytes:
            raw, truncated = raw[:max_bytes], True
        try:
            msg, stopped_at = _parse(raw)
        except Exception as exc:  # the parser is lenient; this guards against its own bugs
            problem = f"unparseable: {type(exc).__name__}"
            return MailText(_collapse(_raw_text(raw)), damaged=True, truncated=truncated, problems=(problem,))
        data = raw
    else:
        msg, data, stopped_at = raw, None, None
    walker = _TextWalker()
    try:
        pieces = walker.message(msg)
    except Exception as exc:  # a library bug on some odd message must not stop a mailbox
        walker.problems.append(f"unreadable: {type(exc).__name__}")
        pieces = [] if data is None else [_raw_text(data)]
    else:
        if stopped_at is not None:  # the parts past MAX_PARTS: their text as it stands
            walker.problems.append(_TOO_MANY_PARTS)
            pieces.append(_decode_without_charset(data[stopped_at:]))
    text = _collapse(" ".join(pieces))
    problems = tuple(dict.fromkeys(walker.problems))  # each kind once, in the order met
    # A message cut at max_bytes (or at MAX_PARTS) has an unfinished last part: that is the cut,
    # not damage (past MAX_PARTS the message is marked damaged anyway).
    if truncated or stopped_at is not None:
        problems = tuple(p for p in problems if p not in _CUT_DEFECTS)
    if truncated and header_block_end(data) is None:
        # Header lines padded past the part read leave no Subject or body to read: an empty text
        # judged as harmless would let a sender hide any pitch behind a megabyte of headers.
        problems += (_HEADERS_PAST_THE_CUT,)
    return MailText(text, bool(problems), truncated, problems, tuple(ctype for ctype, _ in walker.attachments))


def _raw_text(raw: bytes) -> str:
    """The text of a message that the parser or the walk gave up on: its Subject and its body's
    bytes as they stand, MIME lines and all. Parts nested past Python's recursion limit (40 KB of
    boundaries is enough) stop both, and an empty text would let such a message read as harmless."""
    end = header_block_end(raw)
    body = raw if end is None else raw[end:]
    return (header_value(raw, "subject") or "") + " " + _decode_without_charset(body)


_HEADERS_PAST_THE_CUT = "header block longer than the part read"

# What cutting a message short makes the parser report about its last part.
_CUT_DEFECTS = {"CloseBoundaryNotFoundDefect", "InvalidBase64PaddingDefect", "InvalidBase64LengthDefect",
                "InvalidBase64CharactersDefect", "StartBoundaryNotFoundDefect"}


# Control characters (NUL, escape sequences, ...) carry no words: they read as spaces.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


# Half of a UTF-16 surrogate pair is no character, and text holding one cannot be written as UTF-8:
# a charset such as unicode-escape ("\\ud800" in the body) made one, and prepare stopped at the
# message with an error. Such halves read as U+FFFD.
_SURROGATE_CHARS = "\ud800-\udfff"
_SURROGATES = re.compile(f"[{_SURROGATE_CHARS}]")

# Characters a mail reader does not show (zero-width spaces and joiners, the soft hyphen, direction
# marks, the byte-order mark): put between the letters of "WIN" they leave it "WIN" on the screen,
# but gave the model tokens unlike any word it was trained on. They are dropped. So are the other
# characters that Unicode says take no room and renderers draw as nothing (its default-ignorable
# ones but for the Hangul fillers, which fonts draw as a blank): the combining grapheme joiner,
# the Arabic letter mark (a direction mark too), the Khmer inherent vowels, Mongolian variation
# selectors, variation selectors (U+FE00-FE0F and the supplement's), the musical formatting
# characters and the tag characters (U+E0000-E007F), all of which "W\U000e0041IN" and the like
# once left inside the word.
_INVISIBLE_CHARS = (
    "\u00ad\u034f\u061c\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufe00-\ufe0f\ufeff\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)

# Letters and digits in forms that a reader shows as plain ones: full width ("ＦＲＥＥ"),
# mathematical alphanumerics ("𝐅𝐑𝐄𝐄"), ligatures ("ﬁ"), circled and squared ones ("Ⓕ", "🄵").
# They read as those letters (their NFKC form): on the screen they are "FREE", but they gave the
# model tokens it had never seen together. Other characters are left as written.
_LETTER_FORM_CHARS = "\uff01-\uff5e\ufb00-\ufb06\u2460-\u24ff\U0001d400-\U0001d7ff\U0001f130-\U0001f189"

# All three in one pass, which only text that is not ASCII needs (str.isascii() costs nothing):
# three passes over every text had made parsing 45% slower.
_UNREADABLE_RUNS = re.compile(f"[{_SURROGATE_CHARS}{_INVISIBLE_CHARS}{_LETTER_FORM_CHARS}]+")
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]")


def _as_read(match: re.Match) -> str:
    """A run of the characters above as a reader shows it."""
    run = _INVISIBLE.sub("", _SURROGATES.sub("\ufffd", match.group()))
    return unicodedata.normalize("NFKC", run)  # changes only the letter forms among what is left


def _collapse(text: str) -> str:
    text = _CONTROLS.sub(" ", text)
    if not text.isascii():
        text = _UNREADABLE_RUNS.sub(_as_read, text)
    return " ".join(text.split())


# The headers the parser and the text read (the only ones cut to MAX_HEADER_CHARS that matter).
_READ_HEADERS = {"subject", "content-type", "content-disposition", "content-transfer-encoding"}


_TOO_MANY_PARTS = "too many parts"

# The attachments mail clients display inline, read where a message has no other body text.
_SHOWN_ATTACHMENTS = frozenset({"text/plain", "text/html", "message/rfc822"})

# Words as the versions of a multipart/alternative are compared: runs of letters and digits, case
# folded. Links are left out: a plain version writes out the addresses an HTML one keeps in its
# markup ("the report <https://...>"), a dozen words each that say nothing of the message.
_WORD = re.compile(r"\w+")
# (The schemes are spelled out: a pattern that scans a run of letters for "://" takes time growing
# with the square of the run's length, and a part can be one 1 MiB run.)
_LINK = re.compile(r"\b(?:https?://|ftp://|www\.|mailto:)\S*", re.IGNORECASE)

# How much of their words two versions must share (the shared distinct words over all the distinct
# words of both) for the plain one to stand for the HTML one. The plain version of normal mail is
# made from the HTML and shares all its words but for a few a conversion changes (image names,
# words run together by markup); a spammer's harmless plain version ("see you tomorrow") beside
# the pitch in the HTML shares almost none. Past this, the HTML's visible text is read, not the
# two: it is what mail clients show, and reading both would let words no reader sees (in the plain
# version) outweigh the pitch. To pass, a pitch must come with nine times its distinct words in
# text that both versions show, where the reader sees it too.
SAME_WORDS = 0.9


def _same_words(plain: str, html: str) -> bool:
    """Whether a plain and an HTML version say the same: see ``SAME_WORDS``."""
    plain_words = set(_WORD.findall(_LINK.sub(" ", plain).casefold()))
    html_words = set(_WORD.findall(_LINK.sub(" ", html).casefold()))
    if not plain_words | html_words:
        return True
    return len(plain_words & html_words) >= SAME_WORDS * len(plain_words | html_words)


@dataclass
class _Walk:
    """A part's text pieces and what its walk noted (``_TextWalker._walk_apart``)."""

    pieces: list[str]
    problems: list[str]
    attachments: list[tuple[str, Message]]
    shown_attachments: list[Message]


class _TextWalker:
    """Walks a parsed message and gathers the pieces of its text, noting problems on the way;
    it reads the first ``MAX_PARTS`` parts only."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.attachments: list[tuple[str, Message]] = []  # the skipped parts' types, and the parts
        self.shown_attachments: list[Message] = []  # skipped parts of _SHOWN_ATTACHMENTS: see message()
        self.parts_seen = 0

    def _at_limit(self) -> bool:
        """True (noted as a problem) once ``MAX_PARTS`` parts have been read."""
        if self.parts_seen < MAX_PARTS:
            return False
        self.problems.append(_TOO_MANY_PARTS)
        return True

    def message(self, msg: Message) -> list[str]:
        if self._at_limit():
            return []
        self._defects(msg)
        subject = self._subject(msg)
        start = len(self.shown_attachments)
        body = self.part(msg)
        attached = self.shown_attachments[start:]
        del self.shown_attachments[start:]
        # A text part or a message sent as an attachment is what a message shows when it has no
        # other body: mail clients display them inline, so a pitch sent as the only, "attached",
        # text part read as a message of no words. Beside a body, attachments (logs, notes, code)
        # are not the message, and stay skipped.
        if attached and not any(piece.strip() for piece in body):
            read = {id(part) for part in attached}
            self.attachments = [entry for entry in self.attachments if id(entry[1]) not in read]
            body = []
            for part in attached:
                if part.get_content_type() == "message/rfc822":
                    body += [piece for child in _children(part) for piece in self.message(child)]
                else:
                    body.append(self._text(part))
        return [subject, *body]

    def _defects(self, part: Message) -> None:
        self.problems.extend(type(defect).__name__ for defect in part.defects)
        if any(len(value) > MAX_HEADER_CHARS for name, value in part.raw_items() if name.lower() in _READ_HEADERS):
            self.problems.append("header too long")

    def _subject(self, msg: Message) -> str:
        raw_values = [value for name, value in msg.raw_items() if name.lower() == "subject"]
        if not raw_values:
            return ""
        raw = raw_values[0]
        if isinstance(raw, str) and _has_surrogates(raw):
            # 8-bit bytes in the header: the parser kept them as surrogates.
            data = raw.encode("utf-8", "surrogateescape")
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                self.problems.append("8-bit header not UTF-8")
                return data.decode("cp1252", errors="replace")
        try:
            value = str(msg["subject"])
        except Exception:
            self.problems.append("unreadable Subject")
            return str(raw)
        if "\ufffd" in value and "\ufffd" not in str(raw):
            self.problems.append("undecodable Subject")
        return value

    def part(self, part: Message) -> list[str]:
        """The text pieces of ``part``, recursively; attachments skipped."""
        if self._at_limit():
            return []
        self.parts_seen += 1
        self._defects(part)
        ctype = part.get_content_type()
        maintype = part.get_content_maintype()
        if part.get_content_disposition() == "attachment":
            self.attachments.append((ctype, part))
            if ctype in _SHOWN_ATTACHMENTS:
                self.shown_attachments.append(part)
            return []
        if part.is_multipart():
            children = list(_children(part))
            if ctype == "message/rfc822":
                return [piece for child in children for piece in self.message(child)]
            if ctype == "multipart/alternative":
                return self._alternative(children)
            return [piece for child in children for piece in self.part(child)]
        if maintype == "multipart":  # declared multipart but no boundary: the parser kept it as one text
            return [self._decoded(part)]
        if maintype != "text" or part.get_content_subtype() not in ("plain", "html"):
            self.attachments.append((ctype, part))
            return []
        return [self._text(part)]

    def _text(self, part: Message) -> str:
        """The text of a ``text/plain`` or ``text/html`` part (HTML as its visible text)."""
        text = self._decoded(part)
        return html_to_text(text) if part.get_content_type() == "text/html" else text

    def _alternative(self, children: list[Message]) -> list[str]:
        """The version a reader sees: the last HTML (or multipart, e.g. ``related``) version that
        shows any words, as clients display the last version they can (RFC 2046); the plain one
        instead where it says the same (``_same_words``) or where no HTML version shows a word.
        Only the problems and attachments of the version read are kept."""
        plain = rendered = None
        for child in children:
            if child.get_content_disposition() == "attachment":
                continue
            ctype = child.get_content_type()
            if ctype == "text/plain" and plain is None:
                walk = self._walk_apart(child)
                if any(piece.strip() for piece in walk.pieces):
                    plain = walk
                else:
                    self._keep(walk, only_limit=True)
            elif ctype == "text/html" or child.is_multipart():
                walk = self._walk_apart(child)
                if _WORD.search(_collapse(" ".join(walk.pieces))):
                    if rendered is not None:
                        self._keep(rendered, only_limit=True)
                    rendered = walk
                else:  # empty, or markup debris only: a reader sees nothing there
                    self._keep(walk, only_limit=True)
        if plain is not None and rendered is not None:
            if _same_words(_collapse(" ".join(plain.pieces)), _collapse(" ".join(rendered.pieces))):
                chosen, dropped = plain, rendered
            else:
                chosen, dropped = rendered, plain
            self._keep(dropped, only_limit=True)
        else:
            chosen = rendered or plain
        if chosen is None:
            return []
        self._keep(chosen)
        return chosen.pieces

    def _walk_apart(self, part: Message) -> _Walk:
        """``part(part)`` with the problems, attachments and shown attachments it notes kept apart,
        for ``_keep`` to add or leave out once the version to read is chosen."""
        saved = self.problems, self.attachments, self.shown_attachments
        self.problems, self.attachments, self.shown_attachments = [], [], []
        try:
            pieces = self.part(part)
            return _Walk(pieces, self.problems, self.attachments, self.shown_attachments)
        finally:
            self.problems, self.attachments, self.shown_attachments = saved

    def _keep(self, walk: _Walk, only_limit: bool = False) -> None:
        """What ``walk`` noted, as if its part had been walked in place; of a version not read,
        only that the part limit was met (the walk stopped there, whichever version is read)."""
        if only_limit:
            self.problems.extend(p for p in walk.problems if p == _TOO_MANY_PARTS)
            return
        self.problems.extend(walk.problems)
        self.attachments.extend(walk.attachments)
        self.shown_attachments.extend(walk.shown_attachments)

    def _base64(self, payload) -> bytes | None:
        if not isinstance(payload, str):
            return None
        try:
            return base64.b64decode("".join(payload.split()), validate=True)
        except ValueError:  # binascii.Error: truncated or with stray characters
            self.problems.append("bad base64")
            return _lenient_base64(payload)

    def _decoded(self, part: Message) -> str:
        """The part's payload with its transfer encoding undone and its charset applied."""
        encoding = _transfer_encoding(part)
        if encoding == "base64":
            payload = self._base64(_encoded_payload(part))
        elif encoding == "quoted-printable":
            # Decoded here, not by the standard library: it decodes only a header that is the bare
            # name (not "quoted-printable (x)"), and keeps the blanks that transport adds at the
            # end of a line, which RFC 2045 has decoders delete: "V= " then a line break is a soft
            # break to mail clients, and read "V= iagra".
            sent = _sent_bytes(part)
            payload = None if sent is None else quopri.decodestring(_TRAILING_BLANKS.sub(b"", sent))
        else:
            payload = part.get_payload(decode=True)
        if payload is None:  # a payload that is not a string (a mislabelled multipart)
            self.problems.append("text part without text")
            return ""
        charset = part.get_content_charset()
        if charset is None:
            return _decode_without_charset(payload)
        try:
            text = payload.decode(_codec(charset))
            if _SURROGATES.search(text):  # read as U+FFFD (_collapse), as bytes that are not in a charset are
                self.problems.append(f"bytes not in charset {charset}")
            return text
        except LookupError:  # unknown charset, or a codec that is not a text encoding
            self.problems.append(f"unknown charset {charset}")
        except (UnicodeDecodeError, ValueError):
            self.problems.append(f"bytes not in charset {charset}")
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            pass
        try:
            return payload.decode(_codec(charset), errors="replace")
        except (LookupError, ValueError):
            return payload.decode("utf-8", errors="replace")


# Python's punycode codec decodes in time that grows with the square of the text: a 1 MiB body
# declared charset=punycode held `spamtune filter` for 21 s (3.5 s as an unknown charset), a cost
# any sender could put on a filter. No mail is written in it; it reads as an unknown charset.
_SLOW_CODECS = frozenset({"punycode"})


def _codec(charset: str) -> str:
    """The codec of a declared charset; LookupError for an unknown one or one of ``_SLOW_CODECS``."""
    name = codecs.lookup(charset).name
    if name in _SLOW_CODECS:
        raise LookupError(charset)
    return name


def _encoded_payload(part: Message):
    """The part's body as sent, still transfer-encoded (8-bit bytes as surrogates).

    ``get_payload()`` first reads 8-bit bytes in the body in the declared charset, and some codecs
    (idna, punycode) raise there whatever the error handler: one byte 0xA0 in a base64 part
    declared charset=idna made the whole message unreadable, its text a page of base64 letters."""
    try:
        return part.get_payload()
    except (UnicodeError, ValueError):
        return part._payload  # as the parser stored it (the standard library's generator reads it so too)


def _sent_bytes(part: Message) -> bytes | None:
    """The part's body as sent, still transfer-encoded, as bytes (None for a payload that is not
    text: a mislabelled multipart). 8-bit bytes, kept by the parser as surrogates, come back as
    they were; a message built from text gives its characters as the standard library does."""
    payload = part._payload  # get_payload() would read 8-bit bytes in the charset first, losing them
    if not isinstance(payload, str):
        return None
    try:
        return payload.encode("ascii", "surrogateescape")
    except UnicodeError:
        return payload.encode("raw-unicode-escape")


# Blanks at the end of a line (before its break, or at the end of the body).
_TRAILING_BLANKS = re.compile(rb"[ \t]+(?=\r?\n|\Z)")


def _transfer_encoding(part: Message) -> str:
    """The part's Content-Transfer-Encoding: the name alone, lower case, without the comment RFC 2045
    allows after it or a stray ``;`` (``base64 (encoded)`` is ``base64``). Read as the whole
    header's text, such a header left a part's base64 undecoded, a page of letters to the model,
    while a reader that drops the comment shows the sender's text."""
    header = part.get("content-transfer-encoding")
    if header is None:
        return "7bit"
    parsed = getattr(header, "cte", None)  # the policy's parse of the header, comments dropped
    if parsed is None:  # a message parsed by the caller with another policy: its plain text
        parsed = re.split(r"[\s;(]", str(header).strip(), maxsplit=1)[0]
    return parsed.lower()


def _lenient_base64(payload: str) -> bytes:
    """Base64 decoded as far as it goes: stray characters dropped, a cut-off last group kept in part.

    The standard library hands back the undecoded text when base64 is truncated; the start of the
    message is worth more to the model than a page of base64 letters. Padding in the middle (a
    mailer that encodes each line apart, ``SGk=`` then ``Q2xhaW0=``) ends a group, not the text:
    decoders that read group by group show what follows, and reading up to the first ``=`` only
    let a sender put the pitch after a harmless ``Hi``.
    """
    decoded = []
    for run in _PADDING.split(_NOT_BASE64.sub("", payload)):
        usable = len(run) - (len(run) % 4 == 1)  # one lone letter carries no whole byte
        run = run[:usable]
        if run:
            decoded.append(base64.b64decode(run + "=" * (-len(run) % 4)))
    return b"".join(decoded)


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
_PADDING = re.compile(r"=+")


def _children(part: Message) -> Iterator[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        yield from (child for child in payload if isinstance(child, Message))


def _decode_without_charset(payload: bytes) -> str:
    """No declared charset means US-ASCII, but 8-bit mail without one is mostly UTF-8 or Windows-1252."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("cp1252", errors="replace")


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


# --------------------------------------------------------------------------- HTML


def html_to_text(html: str) -> str:
    """The text an HTML document shows (``spamtune.mail_html``), whitespace collapsed; never raises."""
    return _collapse(visible_text(html))


def header_block_end(raw: bytes) -> int | None:
    """Where the empty line ending the header block starts, or None when ``raw`` holds none."""
    pos = 0
    while True:
        newline = raw.find(b"\n", pos)
        if newline < 0:
            return None
        if raw[pos:newline] in (b"", b"\r"):
            return pos
        pos = newline + 1


def header_value(raw: bytes, name: str) -> str | None:
    """One header's raw value (unfolded, stripped, cut to ``MAX_HEADER_CHARS``) from the header
    block of ``raw``, or None.

    The pieces of a folded value are joined once at the end: adding each to the value as it came
    copied the value so far every time, and a Message-ID folded over a 1 MiB message took 3.5 s."""
    end = header_block_end(raw)
    wanted = name.lower().encode("ascii") + b":"
    pieces: list[bytes] | None = None
    for line in raw[:end].splitlines():
        if pieces is not None:
            if line[:1] in (b" ", b"\t"):
                pieces.append(line.strip())
                continue
            break
        if line.lower().startswith(wanted):
            pieces = [line[len(wanted):].strip()]
    if pieces is None:
        return None
    return b" ".join(pieces).strip().decode("utf-8", errors="replace")[:MAX_HEADER_CHARS]
