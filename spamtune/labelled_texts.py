"""Reading labelled texts: the rows (text, label) of an input in its own format, checked.

The formats: the SMS Spam Collection's own layout, TSV, CSV and JSONL files (a file, stdin or a
pipe), and mail sources ``LABEL=PATH``; with the rules every one of them follows for labels
(case, numbers by value, clean printable names), for finding the text and label columns, for
size limits, and for saying what is wrong with an input in one line.

Kept apart from ``spamtune.prepare`` (which cuts what is read here into splits) because more
than prepare reads labelled files: ``evaluate --input`` scores a run on one, with no splits to
cut. What makes an input readable is one concern, whatever is done with its rows after.

The one deliberate difference from chapter 6 of *Build a Large Language Model (From Scratch)*
is the parsing of the SMS Spam Collection: the book reads it with pandas' default CSV quoting,
which treats a message that starts with ``"`` as the start of a quoted field and merges lines
(5,572 rows); here it is read with quoting off, one message per ``\\n``-terminated line, which
gives the collection's real 5,574 rows.

Nothing here prints: the functions return what they read, or raise one-line errors.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
import sys
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pandas as pd

from spamtune import paths
from spamtune.data import MAX_TEXT_CHARS
from spamtune.errors import SpamtuneError, SpamtuneUsageError, SpamtuneWarning
from spamtune.fsutil import expand_user
from spamtune.lines import normalise_line_ends
from spamtune.mail import Unreadable, extract
from spamtune.mail_sources import MailSource, iter_messages, parse_source
from spamtune.streams import waiting

INPUT_FORMATS = ("tsv", "csv", "jsonl")
DEFAULT_TEXT_COL = "text"
DEFAULT_LABEL_COL = "label"
STDIN = "-"  # ``--input -``: the labelled texts come on stdin
# A stream (stdin, a pipe, a FIFO, a character device) has no size to check before it is read,
# and one that never ends (`yes`, /dev/zero) would fill the memory: it is read up to this.
MAX_STREAM_BYTES = 1 << 30
_STREAM_CHUNK = 1 << 20

SMS_FORMAT = "sms"  # the SMS Spam Collection's own layout: ``ham|spam<TAB>text``, no header
SMS_FILE_NAME = "SMSSpamCollection"
SMS_LABELS = {"ham": 0, "spam": 1}
_SMS_FIRST_LINE = re.compile(r"(ham|spam)\t", re.IGNORECASE)
_EXTENSION_FORMATS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_INTEGER = re.compile(r"[+-]?\d+")
# A label written as a decimal number (``1``, ``1.0``, ``+1``, ``1e0``): compared by its value.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# Digits a whole-number label may have: Python writes no longer int (4,300 digits), and an id
# that long names no class; the bound also keeps ``1e999999999`` from being written out.
MAX_LABEL_DIGITS = 1000


@dataclass
class LabelledTexts:
    """The rows of an input file, in file order, with the label name -> class index mapping."""

    path: Path  # "-" for stdin
    sha256: str
    format: str  # "sms", "tsv", "csv" or "jsonl"
    texts: list[str]
    labels: list[str]
    label_map: dict[str, int]
    text_col: str | None = None  # None for the SMS format, which has no header
    label_col: str | None = None
    label_case_folded: bool = True  # labels were compared ignoring case ("Spam" is "spam")
    # Label -> the spellings merged into it (``Spam`` and ``spam``; ``1`` and ``1.0``), for labels with more than one.
    label_spellings_merged: dict[str, list[str]] = field(default_factory=dict)
    mail_sources: list[MailSourceCounts] | None = None  # for mail inputs: what each source held
    stream: bool = False  # read once from stdin, a pipe, a FIFO or a device: ``path`` cannot be read again

    @property
    def name(self) -> str:
        """The input as messages name it: ``stdin`` for ``-``."""
        return input_name(self.path)

    def label_counts(self) -> dict[str, int]:
        """Rows per label name, in class-index order."""
        counts = Counter(self.labels)
        return {name: counts[name] for name in self.label_map}


@dataclass
class MailSourceCounts:
    """What one ``LABEL=PATH`` mail source held: messages found, and how many were damaged, cut,
    empty or unreadable.

    Damaged messages (parser defects, charset fallbacks) are kept with the text that could be
    read; empty ones (no Subject and no body text) are left out; truncated ones were read on
    their first ``MAX_MESSAGE_BYTES`` only; unreadable ones (files that could not be read) are
    left out, each with a warning naming it.
    """

    label: str
    path: str
    messages: int = 0
    damaged: int = 0
    empty: int = 0
    truncated: int = 0
    unreadable: int = 0

    @property
    def kept(self) -> int:
        return self.messages - self.empty - self.unreadable



def resolve_input(root: Path, input_file: str | Path | None) -> Path:
    """The file to prepare: ``--input`` if given, else the downloaded SMS Spam Collection."""
    if input_file is None:
        default = paths.sms_file(root)
        if not default.is_file():
            raise SpamtuneError(
                f"SMS Spam Collection not found at {default}; run `spamtune download data` or pass --input FILE, "
                f"or {paths.ELSEWHERE}"
            )
        return default
    if str(input_file) == STDIN:
        return Path(STDIN)
    # Expanded here as --data-dir and mail sources are: the shell leaves the "~" of --input=~/x.csv.
    path = expand_user(input_file)
    if not path.exists():
        raise SpamtuneError(f"input file not found: {path.absolute()}")
    if not is_input_file(path):
        raise SpamtuneError(f"input is not a file, a pipe or a character device: {path}")
    return path


def is_input_file(path: Path) -> bool:
    """Whether ``path`` (a link followed: ``<(cmd)`` is a link to a pipe) is something prepare
    reads labelled texts from: a regular file, a FIFO or pipe, a character device."""
    return path.is_file() or path.is_fifo() or path.is_char_device()


def input_name(path: Path) -> str:
    return "stdin" if str(path) == STDIN else str(path)


def mail_inputs(inputs: list[str]) -> list[str]:
    """The inputs that name mail sources: ``LABEL=PATH`` and not an existing file or pipe."""
    return [str(spec) for spec in inputs if "=" in str(spec) and not is_input_file(expand_user(spec))]


def read_input(
    root: Path,
    inputs: list[str],
    fmt: str | None = None,
    text_col: str | None = None,
    label_col: str | None = None,
    *,
    keep_label_case: bool = False,
    min_labels: int = 2,
) -> LabelledTexts:
    """What ``prepare --input`` names: nothing (the SMS Spam Collection), one labelled-text file, or
    one or more mail sources ``LABEL=PATH``. An input is a mail source when it is not an existing
    file and has the form ``LABEL=PATH``. Labels are compared ignoring case (``fold_label_case``) unless ``keep_label_case``.
    Training needs ``min_labels`` 2; scoring a run on messages of one class (an inbox of ham) needs 1."""
    mail = mail_inputs(inputs)
    if not mail:
        if len(inputs) > 1:
            raise SpamtuneUsageError("give one labelled-text --input FILE, or mail sources as --input LABEL=PATH")
        path = resolve_input(root, inputs[0] if inputs else None)
        return read_labelled_texts(path, fmt, text_col, label_col, keep_label_case=keep_label_case, min_labels=min_labels)
    if len(mail) != len(inputs):
        raise SpamtuneUsageError("mail sources (--input LABEL=PATH) cannot be mixed with a labelled-text --input FILE")
    if fmt is not None or text_col is not None or label_col is not None:
        raise SpamtuneUsageError("--format, --text-col and --label-col apply to labelled-text files, not to mail sources")
    return read_mail_sources([parse_source(spec) for spec in mail], keep_label_case=keep_label_case, min_labels=min_labels)


def read_labelled_texts(
    path: str | Path,
    fmt: str | None = None,
    text_col: str | None = None,
    label_col: str | None = None,
    *,
    keep_label_case: bool = False,
    min_labels: int = 2,
) -> LabelledTexts:
    """Read (text, label) rows from the SMS Spam Collection, a TSV, a CSV or a JSONL file.

    ``fmt`` (``tsv``, ``csv``, ``jsonl``) overrides the guess from the file extension. A file named
    ``SMSSpamCollection``, or a TSV whose first line is ``ham<TAB>...`` / ``spam<TAB>...``, is
    read as the SMS Spam Collection (no header, ham -> 0, spam -> 1). Other files need a header;
    their texts are read verbatim ("NA" stays the text "NA") and their labels map to class indices
    in sorted order (numerically when every label is an integer, so ``0``/``1`` keep their values).

    Every format follows one line-end rule (``spamtune.lines``): a ``\r`` before ``\n`` is
    dropped, so a CRLF file gives the texts its LF twin gives, and the texts ``predict`` sees.
    A file without any ``\n`` has classic Mac OS line ends: there each ``\r`` ends a line.
    Labels are compared ignoring case (``Spam``, ``SPAM`` and ``spam`` are one class, named in
    lower case; ``fold_label_case``) unless ``keep_label_case``, and numbers by value (``label_names``: ``1`` and
    ``1.0`` are one class, ``1``); the spellings merged are reported in ``label_spellings_merged``.
    Columns and JSON keys are found as ``find_column`` finds them: ``Text`` is ``text`` where
    no other column fits as well.
    """
    path, name = Path(path), input_name(Path(path))
    if fmt is not None and fmt not in INPUT_FORMATS:
        raise SpamtuneUsageError(f"unknown input format {fmt!r}; use one of {', '.join(INPUT_FORMATS)}")
    raw, stream = _read_input_bytes(path)
    content = normalise_line_ends(_decode_utf8(raw, name))
    if "\r" in content and "\n" not in content:
        # Classic Mac OS line ends (Excel for Mac's "CSV (Macintosh)"): in a file without a
        # single "\n", every "\r" ends a line, and read as text it would make one long header.
        content = content.replace("\r", "\n")
    if not content.strip():
        raise SpamtuneError(f"{name} is empty")

    fmt = _resolve_format(path, content, fmt)
    if fmt == SMS_FORMAT:
        if text_col is not None or label_col is not None:
            raise SpamtuneUsageError(
                f"{name} is in the SMS Spam Collection layout (label<TAB>text, no header); "
                "--text-col and --label-col apply only to files with a header"
            )
        texts, spellings = _read_sms(content, name, fold_case=not keep_label_case)
        # Its classes are ham and spam however a line spells them (casefold's forms).
        labels = spellings if keep_label_case else [label.casefold() for label in spellings]
    else:
        text_col = text_col or DEFAULT_TEXT_COL
        label_col = label_col or DEFAULT_LABEL_COL
        if text_col == label_col:
            raise SpamtuneUsageError(f"--text-col and --label-col are both {text_col!r}")
        reader = _read_jsonl if fmt == "jsonl" else _read_delimited
        texts, values, row_place, text_col, label_col = reader(content, name, fmt, text_col, label_col)
        labels, spellings = label_names(values, row_place)

    if keep_label_case:
        merged = merged_spellings(labels, spellings)
    else:
        labels, merged = fold_label_case(labels, spellings)
    if fmt == SMS_FORMAT:
        label_map = {name: index for name, index in SMS_LABELS.items() if name in set(labels)}
    else:
        label_map = _label_map(labels)
    if not texts:
        raise SpamtuneError(f"{name} has a header but no rows")
    if len(label_map) < min_labels:
        raise SpamtuneError(f"{name} has only one label ({labels[0]!r}); a classifier needs at least two")
    return LabelledTexts(
        path, hashlib.sha256(raw).hexdigest(), fmt, texts, labels, label_map, text_col, label_col,
        label_case_folded=not keep_label_case, label_spellings_merged=merged, stream=stream,
    )  # fmt: skip


def _read_input_bytes(path: Path) -> tuple[bytes, bool]:
    """The bytes of a labelled-text input, and whether it was a stream. A regular file is read
    whole; stdin (``-``), a pipe (``<(cmd)``), a FIFO or a character device can be read only
    once, so it is read to its end in one pass, and refused past ``MAX_STREAM_BYTES``."""
    name = input_name(path)
    try:
        if str(path) == STDIN:
            if sys.stdin is None:
                raise SpamtuneUsageError("--input - reads labelled texts on stdin, but this process has none")
            return _read_stream(sys.stdin.buffer, name), True
        with open(path, "rb") as file:
            if stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                return file.read(), False
            return _read_stream(file, name), True
    except OSError as exc:
        raise SpamtuneError(f"cannot read {name}: {exc.strerror or exc}") from None


def _read_stream(stream, name: str) -> bytes:
    if stream.isatty():  # typing labelled rows at a prompt is not what was meant
        raise SpamtuneUsageError(f"{name} is a terminal; pipe the labelled texts in, e.g. `spamtune prepare --input - < texts.tsv`")
    stream = waiting(stream)  # a non-blocking pipe's pause is no end of the input
    read = bytearray()  # grown in place: the bytes are held once, not once more when joined
    while len(read) <= MAX_STREAM_BYTES:
        chunk = stream.read(_STREAM_CHUNK)
        if not chunk:
            return read
        read += chunk
    raise SpamtuneError(
        f"{name} holds more than {MAX_STREAM_BYTES >> 20:,} MiB, more than prepare reads from a stream; "
        "save it to a file and pass --input FILE"
    )


def fold_label_case(labels: list[str], spellings: list[str] | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """Labels compared ignoring case, and for each class that more than one spelling fell into,
    those spellings (sorted): a file labelled ``Spam`` in some rows and ``spam`` in others means
    one class, not two. ``spellings``: each label as the file wrote it, where ``label_names``
    made one name of several (``1.0`` and ``1`` are ``1``).

    Compared as Unicode compares text ignoring case (``str.casefold``): ``STRASSE`` and
    ``straße`` are one class, which lower case kept apart. A class is named in lower case where
    its spellings all have one (``Straße`` alone stays ``straße``, and ``ΛΌΓΟΣ`` is ``λόγος``,
    not casefold's ``λόγοσ``), else in casefold's form (``strasse``)."""
    keys = [label.casefold() for label in labels]
    lower_forms: dict[str, set[str]] = {}
    for key, label in zip(keys, labels):
        lower_forms.setdefault(key, set()).add(label.lower())
    names = {key: next(iter(forms)) if len(forms) == 1 else key for key, forms in lower_forms.items()}
    folded = [names[key] for key in keys]
    return folded, merged_spellings(folded, spellings or labels)


def merged_spellings(labels: list[str], spellings: list[str]) -> dict[str, list[str]]:
    """Label -> the spellings (sorted) that became it, for labels that more than one became."""
    seen: dict[str, set[str]] = {}
    for label, spelling in zip(labels, spellings):
        seen.setdefault(label, set()).add(spelling)
    return {label: sorted(names) for label, names in seen.items() if len(names) > 1}


def _kind_of(value) -> str:
    """What a label is: JSON's and a written ``true`` are true/false, ``1.0`` is a number."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, Decimal) or _NUMBER.fullmatch(value):
        return "a number"
    return "true/false" if value.casefold() in ("true", "false") else "a name"


def _spelt(value) -> str:
    """A label value as its file wrote it: JSON's ``true`` and ``1.0`` as they were."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _shown(value, limit: int = 40) -> str:
    """A label for an error line: a name quoted, a number as written; a long one cut."""
    shown = repr(value) if isinstance(value, str) else _spelt(value)
    return shown if len(shown) <= limit else f"{shown[: limit - 3]}... ({len(shown):,} characters)"


def label_names(values: list, row_place: Callable[[int], str]) -> tuple[list[str], list[str]]:
    """Class names for label values (stripped strings; JSON's true/false and numbers as ``bool``
    and ``Decimal``), and each value's spelling: labels that mean the same value are one class.

    Numbers are compared by value when every label is one, written (``1``) or a JSON number
    (``1.0``): ``1``, ``1.0``, ``+1`` and ``1e0`` are the class ``1``. A number with a fraction,
    a number beside true/false (``1`` or ``true``?), and a JSON number or true/false beside a
    name, are errors naming the two rows: no class could be read from them without a guess.
    Written names beside written numbers are names (a CSV may name a class ``1`` beside one
    named ``spam``). ``row_place(i)`` says where row ``i`` is (``line 3 of mails.jsonl``).
    """
    # Each value is judged once, at its first row: a file has few labels and many rows. The type
    # is part of the key, as True == Decimal(1) for a dict.
    first_rows: dict[tuple, int] = {}
    for index, value in enumerate(values):
        first_rows.setdefault((type(value), value), index)
    first: dict[str, int] = {}  # each kind of label: the first row with one
    first_written: dict[str, int] = {}  # the same, of labels written as strings
    first_typed: dict[str, int] = {}  # and of JSON's numbers and true/false
    for (_, value), index in first_rows.items():
        typed = not isinstance(value, str)
        kind = _kind_of(value)
        first.setdefault(kind, index)
        (first_typed if typed else first_written).setdefault(kind, index)
        clashing = [row for other, row in first_typed.items() if other != kind]
        clashing += [
            row for other, row in first_written.items() if other != kind and (typed or {kind, other} == {"a number", "true/false"})
        ]
        if clashing:
            a, b = sorted((index, min(clashing)))
            raise SpamtuneError(
                f"{row_place(a)} has the label {_shown(values[a])} ({_kind_of(values[a])}) and {row_place(b)} the label "
                f"{_shown(values[b])} ({_kind_of(values[b])}); a file's labels are all names, all numbers or all true/false"
            )
    spellings = [value if isinstance(value, str) else _spelt(value) for value in values]
    if set(first) == {"a number"}:
        names = {key: _whole_number(Decimal(key[1]), row_place(index)) for key, index in first_rows.items()}
        return [names[type(value), value] for value in values], spellings
    return spellings, spellings


def _whole_number(value: Decimal, place: str) -> str:
    if not value.is_finite():
        raise SpamtuneError(f"{place} has the label {value}; a label is a name or a whole number")
    if value.adjusted() >= MAX_LABEL_DIGITS:
        raise SpamtuneError(f"{place} has the label {_shown(value)}, a number of over {MAX_LABEL_DIGITS:,} digits; a label names a class")
    if value != value.to_integral_value():
        raise SpamtuneError(
            f"{place} has the label {_shown(value)}, a number with a fraction; a number names a class only as a whole number"
        )
    return str(int(value))


MAIL_FORMAT = "mail"


def read_mail_sources(sources: list[MailSource], *, keep_label_case: bool = False, min_labels: int = 2) -> LabelledTexts:
    """Labelled texts from mail sources (``LABEL=PATH``: Maildir, mbox, folder tree or ``.eml``).

    Each message becomes the text of ``spamtune.mail.message_text`` with its source's label, in
    source order then each source's own stable order. One bad message never stops the read: it
    is counted as damaged (kept with what could be read), empty (left out) or, a file that cannot
    be read, unreadable (left out with a ``SpamtuneWarning`` naming it: training data is better
    without one message than not at all). The sha256 covers every message read, its id and
    bytes, so ``prepare.json`` tells whether the mail changed.
    """
    texts, labels, counts = [], [], []
    digest = hashlib.sha256()
    for source in sources:
        if not source.path.exists():
            raise SpamtuneError(f"mail source not found: {source.path}")
        tally = MailSourceCounts(source.label, str(source.path))
        for message_id, raw in iter_messages(source.path):
            tally.messages += 1
            if isinstance(raw, Unreadable):
                tally.unreadable += 1
                warnings.warn(f"cannot read {source.path / message_id}: {raw.reason}; it is left out", SpamtuneWarning)
                continue
            digest.update(message_id.encode("utf-8", "surrogateescape") + b"\0" + raw + b"\0")
            result = extract(raw)
            tally.damaged += result.damaged
            tally.truncated += result.truncated
            if result.empty:
                tally.empty += 1
                continue
            texts.append(result.text)
            labels.append(source.label)
        counts.append(tally)
        if tally.messages == 0:
            raise SpamtuneError(f"no messages found in {source.path} (a Maildir, an mbox, a folder of messages or a .eml)")
    # The same rules as for labelled-text files: Spam=... and spam=... are one class, 1=... and 1.0=... too.
    names, _ = label_names([s.label for s in sources], lambda index: f"the mail source {sources[index].label}={sources[index].path}")
    name_of = dict(zip((s.label for s in sources), names))
    spellings, labels = labels, [name_of[label] for label in labels]
    if keep_label_case:
        merged = merged_spellings(labels, spellings)
    else:
        labels, merged = fold_label_case(labels, spellings)
    label_map = _label_map(labels)
    if not label_map:
        raise SpamtuneError("the mail sources hold no message with text")
    if len(label_map) < min_labels:
        found = ", ".join(label_map)
        raise SpamtuneError(f"the mail sources give {len(label_map)} label(s) with text ({found}); a classifier needs at least two")
    path = sources[0].path if len(sources) == 1 else Path(os.path.commonpath([s.path.resolve() for s in sources]))
    return LabelledTexts(
        path, digest.hexdigest(), MAIL_FORMAT, texts, labels, label_map, mail_sources=counts,
        label_case_folded=not keep_label_case, label_spellings_merged=merged,
    )  # fmt: skip


# Files that are not text at all, by their first bytes: a line and byte in them would mean nothing.
_NOT_TEXT = (
    ((b"\xff\xfe", b"\xfe\xff"), "it is UTF-16 (as Excel saves 'Unicode Text'); save it as UTF-8"),
    ((b"\x1f\x8b",), "it is gzip-compressed; decompress it first"),
    ((b"PK\x03\x04",), "it is a zip archive (an Excel .xlsx workbook is one); save the sheet as 'CSV UTF-8'"),
)


def _decode_utf8(raw: bytes, name: str) -> str:
    """Strict UTF-8 (a leading byte-order mark is dropped); a bad byte is reported by line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        for magic, why in _NOT_TEXT:
            if raw.startswith(magic):
                raise SpamtuneError(f"{name} is not UTF-8 text: {why}") from None
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpamtuneError(
            f"{name} is not valid UTF-8: line {line} has the byte 0x{raw[exc.start]:02x}; save it as UTF-8"
        ) from None


def _resolve_format(path: Path, content: str, fmt: str | None) -> str:
    looks_like_sms = _SMS_FIRST_LINE.match(content) is not None
    if fmt is None:
        fmt = None if str(path) == STDIN else _EXTENSION_FORMATS.get(path.suffix.lower())
        if path.name == SMS_FILE_NAME or (fmt in (None, "tsv") and looks_like_sms):
            return SMS_FORMAT
        if fmt is None:
            how = "" if str(path) == STDIN else " from its name"  # stdin has none
            raise SpamtuneUsageError(f"cannot tell the format of {input_name(path)}{how}; pass --format {'|'.join(INPUT_FORMATS)}")
    elif fmt == "tsv" and looks_like_sms:
        return SMS_FORMAT
    return fmt


def _read_sms(content: str, name: str, fold_case: bool) -> tuple[list[str], list[str]]:
    """One message per line, split on ``\\n`` only: ``ham|spam<TAB>text``, the text verbatim.

    Quoting is off (a leading ``"`` is part of the message) and other line-break characters
    (U+0085, U+2028, ...) stay inside their message, as they do in the collection. With
    ``fold_case`` a label is checked ignoring case (``Spam`` is spam); it is returned as written.
    """
    texts, labels = [], []
    for number, line in enumerate(content.rstrip("\n").split("\n"), start=1):
        label, tab, text = line.partition("\t")
        if not tab:
            raise SpamtuneError(f"line {number} of {name} has no TAB; expected ham<TAB>text or spam<TAB>text")
        if (label.casefold() if fold_case else label) not in SMS_LABELS:
            raise SpamtuneError(f"line {number} of {name} has the unknown label {label!r}; expected ham or spam")
        _check_text_length(text, f"line {number} of {name}")
        texts.append(text)
        labels.append(label)
    return texts, labels


def _read_delimited(content: str, name: str, fmt: str, text_col: str, label_col: str):
    """A CSV (RFC 4180 quoting: commas, quotes and newlines inside quoted fields) or a TSV
    (no quoting, as in the IANA TSV format: a ``"`` is an ordinary character), with a header."""
    options = {"sep": ","} if fmt == "csv" else {"sep": "\t", "quoting": csv.QUOTE_NONE}
    # Lines end at "\n" alone (spamtune.lines; CRLF is gone already): by default pandas also
    # ends a row at a lone "\r", which cut a text holding one into two rows.
    options["lineterminator"] = "\n"
    options.update(dtype=str, keep_default_na=False, na_filter=False)
    if fmt == "csv":
        _refuse_text_after_a_closing_quote(content, name)
    try:
        frame = pd.read_csv(io.StringIO(content), **options)
        # The header as written: pandas renames a second "label" column "label.1", and reading
        # the first without a word would leave the other's labels unread.
        header = pd.read_csv(io.StringIO(content), header=None, nrows=1, **options).iloc[0].tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SpamtuneError(f"cannot parse {name} as {fmt.upper()}: {_one_line(exc)}") from None
    columns = [str(c) for c in frame.columns]
    if len(header) != len(columns):
        header = columns
    # Quoted, as the column asked for is: a header cell may hold a line break (a file without a
    # header has its first text there), and the error is to stay one line.
    named = ", ".join(map(repr, header))
    if not isinstance(frame.index, pd.RangeIndex):
        # pandas reads a first data row with more fields than the header as an unnamed index
        # column before the named ones: every text would be shifted one field, in silence.
        inside = "put a text holding a comma in double quotes" if fmt == "csv" else "a TSV text cannot hold a tab"
        inside = _other_separator(header, text_col) or inside
        raise SpamtuneError(
            f"data row 1 of {name} has more fields than its header ({named}); {inside}"
        )
    found = []
    for option, column in (("--text-col", text_col), ("--label-col", label_col)):
        position = find_column(header, column, option, name, "column")
        if position is None:
            raise SpamtuneError(
                f"column {column!r} not found in {name} (its header: {named}); "
                + (_other_separator(header, column) or f"pass {option} NAME, or add a header line if the file has none")
            )
        found.append(position)
    _refuse_one_column_twice(header, found)
    _refuse_a_repeated_header(frame, header, found, name)
    texts = frame.iloc[:, found[0]].tolist()
    for row, text in enumerate(texts, start=1):
        _check_text_length(text, f"data row {row} of {name}")
    cleaned: dict[str, str] = {}  # each label once: a file has few labels and many rows
    labels = []
    for row, value in enumerate(frame.iloc[:, found[1]].tolist(), start=1):
        if value not in cleaned:
            cleaned[value] = _clean_label(value, f"data row {row} of {name}")
        labels.append(cleaned[value])
    return texts, labels, lambda index: f"data row {index + 1} of {name}", header[found[0]], header[found[1]]


def _refuse_a_repeated_header(frame: pd.DataFrame, header: list[str], found: list[int], name: str) -> None:
    """Files joined with ``cat`` keep every header but the first as a data row (a byte-order
    mark before it, from Excel): its label, ``label``, was a class of its own, one row per file."""
    repeated = None
    for position in found:
        cells = frame.iloc[:, position].str.lstrip("\ufeff").str.strip() == header[position].strip()
        repeated = cells if repeated is None else repeated & cells
    if repeated.any():
        row = int(repeated.to_numpy().argmax()) + 1
        raise SpamtuneError(
            f"data row {row} of {name} repeats the header ({header[found[0]]!r}, {header[found[1]]!r}): files joined with "
            "their headers? leave out every header line but the first"
        )


def _refuse_text_after_a_closing_quote(content: str, name: str) -> None:
    """A quoted CSV field goes on to its separator: pandas keeps what follows a closing quote,
    so ``"he said \\"hi\\" to me"`` (a quote escaped with a backslash, not doubled as CSV
    does) was read, without a word, as the text ``he said \\hi\\" to me"``. The csv module's
    strict reading finds where; any other problem is left to pandas, which says it as before."""
    if '"' not in content:
        return
    csv.field_size_limit(MAX_TEXT_CHARS)  # as spamtune.data reads the splits
    # A lone "\r" is text here (spamtune.lines), where the csv module would end a row at it.
    reader = csv.reader(io.StringIO(content.replace("\r", " "), newline=""), strict=True)
    records = 0  # the header is record 0; blank lines are no record, as for pandas
    try:
        for row in reader:
            records += bool(row)
    except csv.Error as exc:
        if "expected after" in str(exc):
            where = f"data row {records} of {name}" if records else f"the header of {name}"
            raise SpamtuneError(
                f"{where} goes on after the closing quote of a quoted field; a quote inside one is written "
                '"" in CSV (a \\" is read as a backslash and the end of the field)'
            ) from None


# Separators a file read with the wrong one shows in its one header cell, and what to do.
_OTHER_SEPARATORS = {
    ";": "it is separated by ';' (as Excel writes CSV in some languages): save it comma-separated",
    "\t": "it is separated by tabs: pass --format tsv",
    ",": "it is separated by commas: pass --format csv",
}


def _other_separator(header: list[str], column: str) -> str | None:
    """What to do where the header is one cell that another separator cuts into the column asked for."""
    if len(header) == 1:
        for separator, advice in _OTHER_SEPARATORS.items():
            if column.strip().casefold() in (cell.strip().casefold() for cell in header[0].split(separator)):
                return advice
    return None


def find_column(names: list[str], wanted: str, option: str, where: str, noun: str) -> int | None:
    """The position of the column (or JSON key) ``wanted`` among ``names``: the one spelt so,
    else the one that differs from it only in case or surrounding spaces (a header ``Text,
    Label``, a hand-written ``text, label``); None where there is none. Two that fit alike are
    an error naming them, not a guess."""
    exact = [index for index, name in enumerate(names) if name == wanted]
    if len(exact) > 1:
        raise SpamtuneError(f"{where} has {len(exact)} {noun}s named {wanted!r} (for {option}); rename all but one")
    if exact:
        return exact[0]
    key = wanted.strip().casefold()
    loose = [index for index, name in enumerate(names) if name.strip().casefold() == key]
    if len(loose) > 1:
        candidates = ", ".join(repr(names[index]) for index in loose)
        raise SpamtuneError(
            f"{where} has the {noun}s {candidates}, which differ only in case or spaces; pass {option} with the one to read"
        )
    return loose[0] if loose else None


def _refuse_one_column_twice(names: list[str], found: list[int]) -> None:
    if found[0] == found[1]:
        raise SpamtuneUsageError(f"--text-col and --label-col both name {names[found[0]]!r}")


class _JsonObject(dict):
    """A JSON object that keeps its keys as written, a repeated one too: ``json`` keeps the
    last value of a repeated key and drops the others without a word."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.pairs = pairs


_SURROGATE = re.compile("[\ud800-\udfff]")
# One decoder for every line: json.loads with options builds a new one per call, which made
# reading a 200,000-line file twice as slow.
_JSON_LINE = json.JSONDecoder(object_pairs_hook=_JsonObject, parse_float=Decimal, parse_int=Decimal, parse_constant=Decimal)


def _read_jsonl(content: str, name: str, fmt: str, text_col: str, label_col: str):
    """One JSON object per line (blank lines skipped).

    Parsed line by line with the json module rather than ``pandas.read_json`` so that every
    problem names its line, and so that a null text is an error instead of a NaN. Numbers are
    read as ``Decimal``: ``1.0`` stays ``1.0`` for the error that names it, and an integer of
    5,000 digits is no ValueError.
    """
    texts, labels, numbers = [], [], []
    for number, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        if line.startswith("\ufeff"):  # files joined with cat keep each one's byte-order mark
            line = line[1:]
        try:
            record = _JSON_LINE.decode(line)
        except json.JSONDecodeError as exc:
            raise SpamtuneError(f"line {number} of {name} is not valid JSON: {exc.msg} (column {exc.colno})") from None
        except RecursionError:  # the json module's parser recurses once per level of nesting
            raise SpamtuneError(f"line {number} of {name} is not valid JSON: nested too deeply") from None
        if not isinstance(record, dict):
            raise SpamtuneError(f"line {number} of {name} is not a JSON object")
        if text_col in record and label_col in record and len(record) == len(record.pairs):
            text_key, label_key = text_col, label_col  # the usual line: both keys as asked, none twice
        else:
            text_key, label_key = _json_keys(record, text_col, label_col, f"line {number} of {name}")
        text, label = record[text_key], record[label_key]
        # A \ud800 escape without its pair's other half decodes to no character: the split file,
        # UTF-8, could not hold it (an unexpected UnicodeEncodeError at the very end, before).
        lone_half = "\\u" in line and isinstance(text, str) and _SURROGATE.search(text)
        if lone_half or not isinstance(text, str) or label is None or isinstance(label, (list, dict)) or len(text) > MAX_TEXT_CHARS:
            where = f"line {number} of {name}"
            if lone_half:
                raise SpamtuneError(
                    f"{where}: {text_key!r} holds the escape \\u{ord(lone_half.group()):04x}, half of a UTF-16 pair without "
                    "the other half, which is no character; fix or leave out the line"
                )
            if not isinstance(text, str):
                raise SpamtuneError(f"{where}: {text_key!r} is {_json_text(text)}, not a string")
            if label is None or isinstance(label, (list, dict)):
                raise SpamtuneError(f"{where}: {label_key!r} is {_json_text(label)}, not a label")
            _check_text_length(text, where)
        texts.append(text)
        labels.append(_clean_label(label, lambda: f"line {number} of {name}") if isinstance(label, str) else label)
        numbers.append(number)
    return texts, labels, lambda index: f"line {numbers[index]} of {name}", text_col, label_col


def _json_keys(record: _JsonObject, text_col: str, label_col: str, where: str) -> tuple[str, str]:
    """The keys of ``record`` that ``--text-col`` and ``--label-col`` name, as ``find_column`` finds them."""
    written = [key for key, _ in record.pairs]
    found = []
    for option, column in (("--text-col", text_col), ("--label-col", label_col)):
        position = find_column(written, column, option, where, "key")
        if position is None:
            keys = ", ".join(map(repr, record)) or "none"
            raise SpamtuneError(f"column {column!r} not found on {where} (its keys: {keys}); pass {option} NAME")
        found.append(position)
    _refuse_one_column_twice(written, found)
    return written[found[0]], written[found[1]]


def _json_text(value, limit: int = 80) -> str:
    """A JSON value for an error line, cut to ``limit`` characters (a text that is a list of
    a million numbers is not to fill the terminal)."""
    shown = str(value) if isinstance(value, Decimal) else json.dumps(value, default=float)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _check_text_length(text: str, where: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise SpamtuneError(
            f"{where} has a text of {len(text):,} characters, more than the {MAX_TEXT_CHARS:,} "
            "a prepared split can hold; shorten it or leave it out"
        )


def _clean_label(value: str, where: str | Callable[[], str]) -> str:
    """Labels are compared without surrounding spaces (``"spam "`` is ``spam``) and in Unicode's
    composed form (NFC); empty ones, and ones holding a tab, a line break or another control
    character, are errors. ``where``: the row, or what says it (made only for an error)."""
    label = value.strip()
    if not label.isascii():
        # "café" with one é, or with e and a combining accent (as macOS spells file names): one
        # text, which looked like two identical classes in labels.json and the summary.
        label = unicodedata.normalize("NFC", label)
    if label and label.isprintable():
        return label
    where = where() if callable(where) else where
    if not label:
        raise SpamtuneError(f"{where} has an empty label")
    # a tab or line break in a label would split predict's output lines
    raise SpamtuneError(f"{where} has the label {label!r}; a label is printable text on one line")


def _label_map(labels: list[str]) -> dict[str, int]:
    """Class indices in sorted label order; numeric order when every label is an integer."""
    names = set(labels)
    if all(_INTEGER.fullmatch(name) for name in names):
        ordered = sorted(names, key=lambda name: (int(name), name))
    else:
        ordered = sorted(names)
    return {name: index for index, name in enumerate(ordered)}


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
