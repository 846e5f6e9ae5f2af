"""``spamtune predict``: classify messages from arguments, a file or stdin, one output line each.

Input is read as bytes in bounded chunks and every chunk's results are written and flushed
before the next is read, so a pipeline of any length runs in constant memory and sees its
answers as they come. A reader that goes away (``| head``) is noticed between batches, not
a chunk later. torch and the model are imported inside the command only; rich only when a
progress bar is drawn.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import select
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn, Optional

import typer

from spamtune import paths
from spamtune.cli import common
from spamtune.cli.common import LongMode, json_line, long_option
from spamtune.errors import SpamtuneError, SpamtuneUsageError
from spamtune.explanation import SHOWN_SPANS
from spamtune.lines import strip_line_end
from spamtune.streams import waiting

# The first chunk read is one CPU batch, so that the first answers come out at once.
FIRST_CHUNK_LINES = 32

if TYPE_CHECKING:
    from spamtune.explanation import Explanation
    from spamtune.infer import Prediction

# Messages classified (and written) per round: enough to fill length-sorted batches, small
# enough that memory stays flat and results flow steadily.
CHUNK_LINES = 2048
READ_SIZE = 1 << 16
# The most of one input line that is kept, as a mail message's first MiB is (spamtune.mail): a
# line without an end (`< /dev/zero`, a 40 MB dump) would otherwise grow in memory without
# bound, and tokenising it all took 2.3 GB and 52 s for 40 MB. A MiB is ~250,000 tokens,
# beyond what any --long mode reads of it in practice.
MAX_LINE_BYTES = 1 << 20
UTF8_BOM = "\ufeff".encode()
# Field names of the machine-readable formats (documented in the README).
TSV_HEADER = "label\tp_spam\ttext\n"
MAIL_TSV_HEADER = "label\tp_spam\tid\n"  # predict --mail: the message's id in the text's place
# --explain: its list of spans as a fourth column, the window it explains as a fifth
EXPLAIN_TSV_HEADER = "label\tp_spam\ttext\texplanation\twindow\n"
# predict --mail --explain: the id's columns, explain's two, then the text the model read of the
# message, which the spans and the window index (it has no other place in a mail line)
MAIL_EXPLAIN_TSV_HEADER = "label\tp_spam\tid\texplanation\twindow\ttext\n"


class OutputFormat(str, enum.Enum):
    text = "text"
    tsv = "tsv"
    jsonl = "jsonl"
    label = "label"


def read_message_chunks(
    stream: BinaryIO, chunk_lines: int = CHUNK_LINES, read_size: int = READ_SIZE, first_chunk_lines: int | None = None,
    on_cut: Callable[[int], None] = lambda line_number: None,
) -> Iterator[list[str]]:
    """The lines of a byte stream as messages, in lists of at most ``chunk_lines``.

    A line ends at ``\\n`` only; a ``\\r`` before it is dropped (CRLF files), empty lines are
    messages, bytes that are not UTF-8 become U+FFFD, and a byte-order mark opening the stream is
    dropped. A chunk is handed over when it is full or when the input has nothing more ready (a
    short read from a pipe or terminal), so a fast producer fills whole batches while a slow one
    gets each answer at once. Memory holds one read, one chunk and the line being assembled.
    A line longer than ``MAX_LINE_BYTES`` is the message of its first MiB (cut between two
    characters); the rest of it is read and dropped, and ``on_cut`` gets its line number.

    ``first_chunk_lines`` starts small and doubles up to ``chunk_lines``: the first answers
    come after one batch rather than a full chunk, and a reader that leaves early (``| head``)
    has cost little.
    """
    read = getattr(stream, "read1", stream.read)
    limit = min(first_chunk_lines or chunk_lines, chunk_lines)
    buffer = bytearray()
    pending: list[str] = []
    first_line = True
    cutting = False  # the line being read passed MAX_LINE_BYTES: the rest of it is dropped as it comes
    lines_read = 0
    waiting_stream = waiting(stream)
    while True:
        data = read(read_size)
        if not data and waiting_stream is not stream:
            # A non-blocking stream reads as empty whenever nothing has arrived yet: that is no
            # end. What is complete goes out, then the wait is for data or the real end.
            if pending:
                yield pending
                pending = []
            data = waiting_stream.read1(read_size)
        if not data:
            break
        if cutting:
            newline = data.find(b"\n")
            cutting = newline < 0
            buffer += b"" if cutting else data[newline:]
        else:
            buffer += data
        end = buffer.rfind(b"\n")
        if end >= 0:
            lines = [_decode_line(_capped(line, lines_read + n, on_cut)) for n, line in enumerate(bytes(buffer[:end]).split(b"\n"), 1)]
            if first_line:
                lines[0], first_line = _without_bom(lines[0]), False
            pending.extend(lines)
            lines_read += len(lines)
            del buffer[: end + 1]
        if _line_bytes(buffer) > MAX_LINE_BYTES and not cutting:  # no line end in sight: keep the first MiB
            del buffer[_utf8_prefix(buffer, MAX_LINE_BYTES) :]
            cutting = True
            on_cut(lines_read + 1)
        while len(pending) >= limit:
            yield pending[:limit]
            del pending[:limit]
            limit = min(2 * limit, chunk_lines)
        if pending and len(data) < read_size:
            yield pending
            pending = []
    if first_line and buffer == UTF8_BOM:  # the mark alone (PowerShell's empty UTF-8 file) is an empty input
        buffer.clear()
    if buffer:  # a last line without a newline
        last = _decode_line(bytes(buffer) if cutting else _capped(bytes(buffer), lines_read + 1, on_cut))
        pending.append(_without_bom(last) if first_line else last)
    if pending:
        yield pending


def _line_bytes(line: bytes | bytearray) -> int:
    """How much of ``line`` counts towards ``MAX_LINE_BYTES``: a trailing ``\\r`` is (or may be,
    before its ``\\n`` arrives) the line end of a CRLF file, not text, and a line of exactly the cap
    is whole."""
    return len(line) - line.endswith(b"\r")


def _capped(line: bytes, number: int, on_cut: Callable[[int], None]) -> bytes:
    if _line_bytes(line) <= MAX_LINE_BYTES:
        return line
    on_cut(number)
    return line[: _utf8_prefix(line, MAX_LINE_BYTES)]


def _utf8_prefix(raw: bytes | bytearray, size: int) -> int:
    """The longest length up to ``size`` (< ``len(raw)``) that does not cut a UTF-8 character in
    two: a character is at most 4 bytes, so at most 3 steps back from a continuation byte."""
    n = size
    while n > size - 3 and raw[n] & 0xC0 == 0x80:
        n -= 1
    return n


def _decode_line(raw: bytes) -> str:
    return strip_line_end(raw.decode("utf-8", errors="replace"))


def _without_bom(first_line: str) -> str:
    """The stream's first line without a UTF-8 byte-order mark (Notepad and PowerShell write one),
    as ``prepare`` reads its files: kept, it is a token of the first message that moves its score."""
    return first_line.removeprefix("\ufeff")


def _argument_text(arg: str) -> str:
    """A command-line argument as text: bytes the OS could not decode become U+FFFD, as in stdin."""
    return os.fsencode(arg).decode("utf-8", errors="replace")


def _stdin_is_terminal() -> bool:
    return sys.stdin is None or sys.stdin.isatty()


def _stdout_is_terminal() -> bool:
    return sys.stdout is not None and sys.stdout.isatty()


def _stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


class ReadMeter:
    """How much of the file or stdin has been read, and its size when it is a regular file:
    what the progress bar shows."""

    def __init__(self) -> None:
        self.done = 0
        self.total: int | None = None
        self.reads_stream = False

    def wrap(self, stream: BinaryIO) -> BinaryIO:
        self.reads_stream = True
        try:
            info = os.fstat(stream.fileno())
            if stat.S_ISREG(info.st_mode):
                self.total = info.st_size
        except (OSError, ValueError, AttributeError):  # io.BytesIO in tests, closed stdin
            pass
        return _CountedStream(stream, self)


class _CountedStream:
    def __init__(self, stream: BinaryIO, meter: ReadMeter):
        self._stream = stream
        self._read = getattr(stream, "read1", stream.read)
        self._meter = meter

    def fileno(self) -> int:
        return self._stream.fileno()

    def read1(self, size: int = -1) -> bytes:
        data = self._read(size)
        self._meter.done += len(data)
        return data

    read = read1


def message_source(messages: list[str], file: Path | None, meter: ReadMeter | None = None, first_chunk_lines: int | None = None) -> Iterator[list[str]]:
    """Chunks of messages from the command line: arguments in order (``-`` = the lines of stdin),
    else ``--input``, else stdin when it is not a terminal. Problems surface here, before the
    model loads."""
    meter = meter or ReadMeter()
    if file is not None and messages:
        raise SpamtuneUsageError("give messages as arguments or with --input, not both")
    if file is not None and str(file) != "-":
        try:
            stream = open(file, "rb")  # noqa: SIM115 - closed by _lines_then_close once read
        except OSError as exc:
            raise _cannot_read(file, exc) from None
        source = str(Path(file).absolute())
        return _reading(_lines_then_close(stream, meter, first_chunk_lines, source), source)
    if file is not None:
        messages = ["-"]
    if not messages:
        if _stdin_is_terminal():
            raise SpamtuneUsageError(
                "no messages to classify: pass them as arguments, with --input PATH, "
                "or on stdin (e.g. `spamtune predict - < messages.txt`)"
            )
        messages = ["-"]
    elif messages.count("-") > 1:
        raise SpamtuneUsageError("'-' (read stdin) can be given only once")
    elif "-" in messages and _stdin_is_terminal():
        if sys.stdin is None:
            raise SpamtuneUsageError("'-' reads stdin, but this process has none")
        common.note("Reading messages from the terminal, one per line; Ctrl-D to end.")
    return _reading(_argument_chunks(messages, meter, first_chunk_lines), "stdin")


def _reading(chunks: Iterator[list[str]], name: str) -> Iterator[list[str]]:
    """``chunks``, a read that fails midway (an I/O error of the disk or the network) being one
    line that names the input."""
    try:
        yield from chunks
    except OSError as exc:
        raise SpamtuneError(f"cannot read {name}: {exc.strerror or exc}") from None


def _lines_then_close(stream: BinaryIO, meter: ReadMeter, first_chunk_lines: int | None, source: str) -> Iterator[list[str]]:
    with stream:
        yield from read_message_chunks(meter.wrap(stream), first_chunk_lines=first_chunk_lines, on_cut=_warn_cut(source))


def _warn_cut(source: str) -> Callable[[int], None]:
    """What ``read_message_chunks`` does with a line cut to its first MiB: one warning, as the
    output line then holds that MiB alone (jsonl's text too)."""
    return lambda line_number: common.warn(
        f"line {line_number:,} of {source} is longer than 1 MiB: only its first MiB is classified and written out"
    )


def _argument_chunks(messages: list[str], meter: ReadMeter, first_chunk_lines: int | None) -> Iterator[list[str]]:
    literal: list[str] = []
    for message in messages:
        if message == "-":
            if literal:
                yield literal
                literal = []
            yield from read_message_chunks(meter.wrap(sys.stdin.buffer), first_chunk_lines=first_chunk_lines, on_cut=_warn_cut("stdin"))
        else:
            literal.append(_argument_text(message))
            if len(literal) == CHUNK_LINES:
                yield literal
                literal = []
    if literal:
        yield literal


def _printable(text: str) -> str:
    """Terminal text column: every control character (escape sequences included) and line
    separator becomes a space."""
    return "".join(" " if common.is_control(c) else c for c in text)


# Terminal styles of the explained spans: words towards spam bold red, towards ham green,
# both underlined so they show without colour perception too.
SPAM_SPAN_STYLE, HAM_SPAN_STYLE, RESET = "\x1b[1;4;31m", "\x1b[4;32m", "\x1b[0m"


def highlight(text: str, explanation: Explanation, color: bool, top_k: int) -> str:
    """``text`` (already made printable, same length) with the top spans marked: coloured on a
    terminal, else as ``[+span]`` (towards spam) and ``[-span]`` (towards ham). The text is
    never parsed as markup: spans are cut by their character offsets."""
    marks = [(s, True) for s in explanation.towards_spam(top_k)] + [(s, False) for s in explanation.towards_ham(top_k)]
    out, last = [], 0
    for span, spam in sorted(marks, key=lambda m: m[0].start):
        out.append(text[last : span.start])
        inner = text[span.start : span.end]
        if color:
            out.append(f"{SPAM_SPAN_STYLE if spam else HAM_SPAN_STYLE}{inner}{RESET}")
        else:
            out.append(f"[{'+' if spam else '-'}{inner}]")
        last = span.end
    out.append(text[last:])
    return "".join(out)


def window_note(explanation: Explanation) -> str:
    """Which characters of a message the explanation explains, for people: the window that
    decided the verdict, where it is not the whole message (``chars 0-310 and 2690-3000 of 3000``)."""
    parts = " and ".join(f"{part.start}-{part.end}" for part in explanation.window)
    return f"(explains chars {parts} of {len(explanation.text)})"


class Renderer:
    """Turns predictions (and, with ``--explain``, their explanations) into output lines, each
    ending in a newline."""

    def __init__(self, fmt: OutputFormat, labels: list[str], positive: str, color: bool, top_k: int = SHOWN_SPANS):
        self.fmt = fmt
        self.positive = positive
        self.width = max(map(len, labels))
        self.color = color
        self.top_k = top_k

    def line(self, p: Prediction, explanation: Explanation | None = None) -> str:
        if self.fmt is OutputFormat.tsv:
            extra = "" if explanation is None else f"\t{self.explanation_columns(explanation)}"
            return f"{p.label}\t{p.probability:.4f}\t{common.tsv_field(p.text)}{extra}\n"
        if self.fmt is OutputFormat.jsonl:
            record = {"text": p.text, "label": p.label, "p_spam": round(p.probability, 6)}
            if explanation is not None:
                record.update(self.explanation_fields(explanation))
            return json_line(record) + "\n"
        if self.fmt is OutputFormat.label:
            return p.label + "\n"
        label = p.label.ljust(self.width)
        if self.color:  # bold red for the positive class, green for the others
            label = f"\x1b[1;31m{label}\x1b[0m" if p.label == self.positive else f"\x1b[32m{label}\x1b[0m"
        text = _printable(p.text) if explanation is None else self.explained_text(explanation)
        return f"{label}  p({self.positive})={p.probability:.3f}  {text}\n"

    def explanation_columns(self, explanation: Explanation) -> str:
        """tsv's explanation and window columns: two JSON lists, as jsonl's fields."""
        return f"{json_line(explanation.top(self.top_k))}\t{json_line(explanation.window_list())}"

    def explanation_fields(self, explanation: Explanation) -> dict:
        """jsonl's ``explanation`` (the top spans) and ``window`` (what of the text they come from)."""
        return {"explanation": explanation.top(self.top_k), "window": explanation.window_list()}

    def explained_text(self, explanation: Explanation) -> str:
        """text format: the explained text made printable with its top spans marked, after a note
        naming the window where the window does not reach the whole text."""
        text = highlight(_printable(explanation.text), explanation, self.color, self.top_k)
        return text if explanation.reads_whole_text else f"{window_note(explanation)}  {text}"

    def no_verdict_line(self, label: str, text: str) -> str:
        """The line of an item that got no probability (a mail file that could not be read), in
        the columns of ``line``: p_spam empty in tsv, ``-`` in text."""
        if self.fmt is OutputFormat.tsv:
            return f"{label}\t\t{common.tsv_field(text)}\n"
        if self.fmt is OutputFormat.label:
            return label + "\n"
        return f"{label.ljust(self.width)}  p({self.positive})={'-':<5}  {_printable(text)}\n"


def _use_color() -> bool:
    # no-color.org: NO_COLOR set to an empty string is as if unset (as rich, which draws the
    # WARNING lines, reads it).
    return _stdout_is_terminal() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


class ReaderWatch:
    """Notices that the reader of stdout has gone (``| head -2`` exited) without writing to it.

    On a pipe or socket whose other end is closed, ``poll`` reports an error or hang-up at
    once; checking after every batch stops the work within one batch instead of after the
    next chunk's write fails (a 2,048-message chunk of gpt2-small is half a minute on a CPU).
    Elsewhere (a file, a terminal, platforms without ``poll``) the next write tells.
    """

    def __init__(self, stream) -> None:
        self._poller = None
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
            if (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) and hasattr(select, "poll"):
                self._poller = select.poll()
                self._poller.register(fd, 0)  # errors and hang-ups are always reported
        except (OSError, ValueError, AttributeError):  # no real file descriptor (tests' CliRunner)
            pass

    def check(self, *_hook_args) -> None:
        if self._poller is not None and self._poller.poll(0):
            raise BrokenPipeError(errno.EPIPE, "the reader of stdout has gone")

    def after_each_batch(self, model):
        """Check after every batch's forward pass (the classifier head runs once per batch)."""
        head = getattr(model, "out_head", None)
        if self._poller is None or head is None:
            return None
        return head.register_forward_pre_hook(self.check)


class ProgressBar:
    """Messages classified so far, on stderr, while stdout goes to a file or a pipe.

    Drawn only when stderr is a terminal, stdout is not (else the results themselves show the
    progress, and a bar would tear through them), the input is a file or stdin, and not
    ``--quiet``; the bar tracks bytes read when the input's size is known."""

    def __init__(self, meter: ReadMeter):
        self.meter = meter
        self.shown = meter.reads_stream and _stderr_is_terminal() and not _stdout_is_terminal() and not common.is_quiet()
        self.progress = None
        self.task = None

    def __enter__(self) -> ProgressBar:
        if not self.shown:
            return self
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [TextColumn("classifying"), BarColumn(), TextColumn("{task.fields[messages]:,} messages"), TimeElapsedColumn()]
        if self.meter.total:
            columns.append(TimeRemainingColumn())
        self.progress = Progress(*columns, console=common.stderr_console(), transient=True)
        self.task = self.progress.add_task("classifying", total=self.meter.total or None, messages=0)
        self.progress.start()
        return self

    def update(self, messages: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=self.meter.done, messages=messages)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


# A word right after a flag that reads like a value for it: `--fail-on-spam true "hi"` would
# classify "true" as a message, which nobody means.
_FLAG_VALUE_WORDS = {"true", "false", "yes", "no", "on", "off"}
FLAGS = ("--fail-on-spam", "--header", "--json", "--quiet", "-q", "--verbose", "-v")


def _check_flags_take_no_value(argv: list[str]) -> None:
    words = argv[: argv.index("--")] if "--" in argv else argv
    for flag, word in zip(words, words[1:]):
        if flag in FLAGS and word.lower() in _FLAG_VALUE_WORDS:
            raise SpamtuneUsageError(
                f"{flag} is a flag and takes no value; to classify the text '{word}', put it after `--`"
            )


def _given_empty(argv: list[str], option: str) -> bool:
    """Whether ``option`` was given an empty value (``--mail ''``, ``--mail=``): it comes as
    ``Path('.')``, and `--mail "$MAILDIR"` with the variable unset read the whole current folder."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    return f"{option}=" in words or any(word == option and value == "" for word, value in zip(words, words[1:]))


PREDICT_HELP = (
    "Classify messages as spam or ham: exactly one output line per message, in input order.\n\n"
    "Messages come from the arguments (each one a message), from --input, or from stdin ('-', or no arguments "
    "with stdin not a terminal). In a file or on stdin each line is a message: lines end at \\n only, a trailing "
    "\\r is dropped (CRLF files), empty lines are classified too, invalid UTF-8 is replaced by U+FFFD, and a "
    "UTF-8 byte-order mark opening the input is dropped. A line over 1 MiB is read as its first MiB (a warning names it). "
    "Input is read and answered in chunks, so a large stream runs in constant memory and results appear as they come.\n\n"
    "A message longer than the run's max length is cut to its first tokens (its start is kept; see --long). In tsv and text "
    "output, tabs and line breaks inside a message become spaces; jsonl keeps the message exactly (up to that MiB). p_spam is always "
    "the probability of spam, whatever the label. Fields: tsv label, p_spam, text (--header names them); "
    "jsonl {text, label, p_spam}.\n\n"
    "Exit status: 0, 1 for a runtime error, 2 for a usage error. With --fail-on-spam: 0 no spam, 1 spam found, "
    "2 an error (as grep: a script can tell them apart)."
)


@common.examples(
    ('spamtune predict "Do you have time" "WINNER!! Claim your prize"', "one output line per argument"),
    ("cat inbox.txt | spamtune predict - --format jsonl | jq 'select(.p_spam > 0.9)'", "a pipeline, as JSON lines"),
    ("spamtune predict --input outbox.txt --fail-on-spam > /dev/null || echo spam", "exit 1 when any line is spam"),
)
def predict(
    messages: list[str] | None = typer.Argument(
        None, metavar="MESSAGE", help="Messages to classify, one per argument; '-' reads stdin.", show_default=False
    ),
    input_file: Path | None = common.input_option("Read messages from PATH, one per line ('-' = stdin).", allow_dash=True),
    file: Path | None = common.input_alias_option(),
    run: str | None = common.run_option(),
    data_dir: Path | None = common.data_dir_option(),
    output_format: OutputFormat | None = typer.Option(
        None, "--format", case_sensitive=False,
        help="text: label, p(spam), message (for people); tsv: label<TAB>p_spam<TAB>text; "
        "jsonl: {text, label, p_spam} per line; label: the label only.",
        show_default="text on a terminal, else tsv",
    ),
    as_json: bool = common.json_option("jsonl"),
    header: bool = typer.Option(
        False, "--header",
        help="tsv: first print the field names (label, p_spam, text; with --explain also explanation, window; "
        "with --mail id in text's place, and with --explain text last).",
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Label a message spam when its spam probability is at least this. " + common.THRESHOLD_SCOPE,
        show_default="the run's calibrated threshold (spamtune calibrate), else 0.5",
    ),
    explain: bool = typer.Option(
        False, "--explain",
        help="Also show the words that pushed each message most towards spam and towards ham: highlighted in text, "
        "an 'explanation' list in jsonl, a JSON column in tsv. A message longer than the window is explained in the "
        "window that decided its label (see --long), which the output names ('window' in jsonl and tsv). With --mail "
        "the spans index the text the model read of each message, which jsonl and tsv then carry ('text').",
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1,
        help="Most messages per forward pass (on a CPU, fewer where padding them to one length would cost more).",
        show_default="32 on a CPU, 256 on a GPU",
    ),
    device: str = common.device_option(),
    precision: str = common.precision_option(),
    mail: Path | None = typer.Option(
        None, "--mail", metavar="PATH",
        help="Classify mail: a Maildir, an mbox, a folder of message files, a .eml, or '-' for one message on stdin. "
        "One line per message with its id (path, or mbox number and Message-ID) instead of its text.",
    ),
    long: Optional[LongMode] = long_option("chunks with --mail, head for lines of text"),
    fail_on_spam: bool = typer.Option(
        False, "--fail-on-spam",
        help="Exit status 1 when any message is spam, 0 when none is, 2 on an error (after writing all output).",
    ),
    out_file: Path | None = typer.Option(
        None, "--out", "-o", metavar="PATH", dir_okay=False,
        help="Write the results to PATH (complete or not at all: a temporary file renamed at the end) instead of stdout.",
    ),
    devices: int | None = typer.Option(
        None, "--devices", min=1,
        help="Classify --input or --mail with N processes on this machine (one per GPU; torchrun's launcher), one output in input order.",
    ),
    server: str | None = typer.Option(
        None, "--server", metavar="URL", envvar="SPAMTUNE_SERVER",
        help="Send the messages to a running `spamtune serve` at URL instead of loading a model here (no torch import).",
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="SPAMTUNE_API_KEY", help="With --server: the service's API key (prefer the variable)."
    ),
) -> None:
    """Classify chunk by chunk, writing and flushing each chunk's lines before reading on (help: PREDICT_HELP).

    Under torchrun (or ``--devices``) every rank reads the same input, classifies its share of
    each chunk, and rank 0 writes all shares in input order: the output a single process gives."""
    if fail_on_spam:
        common.use_error_exit_code(2)
    _check_flags_take_no_value(common.command_line())
    if out_file is None:
        common.require_stdout()
    to_terminal = out_file is None and _stdout_is_terminal()
    output_format = common.chosen_format(output_format, as_json, OutputFormat.jsonl, None)
    if output_format is None:
        output_format = OutputFormat.text if to_terminal else OutputFormat.tsv
    if header and output_format is not OutputFormat.tsv:
        raise SpamtuneUsageError(f"--header is for --format tsv (this output is {output_format.value})")
    if explain and output_format is OutputFormat.label:
        raise SpamtuneUsageError("--explain needs --format text, tsv or jsonl (label prints the label only)")
    meter = ReadMeter()
    input_path = common.pick_input(input_file, file)
    if server and (devices is not None or out_file is not None):
        raise SpamtuneUsageError("--server sends the messages to a running service; --devices and --out classify here")
    several = not server and _several_ranks(devices)
    if mail is not None:
        if _given_empty(common.command_line(), "--mail"):
            raise SpamtuneUsageError("--mail needs a path (a Maildir, an mbox, a folder, a .eml, or '-' for stdin), not an empty one")
        if messages or input_path is not None:
            raise SpamtuneUsageError("--mail reads its own messages; give no MESSAGE arguments or --input with it")
        if several and str(mail) == "-":
            raise SpamtuneUsageError("several processes classify a mail source they can all read, not stdin: give --mail PATH")
        from spamtune.cli.predict_mail import mail_messages

        chunks = mail_messages(mail)  # a missing source fails here, before any rank starts
        if several and _launched(devices, run, data_dir, device):
            return
    else:
        if several and (input_path is None or str(input_path) == "-" or "-" in (messages or [])):
            raise SpamtuneUsageError("several processes classify a file, not stdin: give --input PATH")
        if several and _launched(devices, run, data_dir, device, input_path):
            return
        chunks = message_source(messages or [], input_path, meter, first_chunk_lines=batch_size or FIRST_CHUNK_LINES)
    if server:  # client mode: hand off before anything imports torch
        from spamtune.cli.remote import predict_remotely

        return predict_remotely(chunks, server, api_key, output_format, threshold, fail_on_spam, header, explain, mail)
    run_dir = paths.resolve_run(run, paths.data_root(data_dir))
    from spamtune import distributed

    world = distributed.init_from_env(device)
    try:
        positives, unreadable = _classify_all(
            chunks, world, run_dir, meter, out_file, renderer_options=(output_format, to_terminal, header),
            threshold=threshold, batch_size=batch_size, device=device, precision=precision, mail=mail, long=long,
            explain=explain,
        )
    except BrokenPipeError as exc:
        reader_gone(exc, fail_on_spam and getattr(exc, "positives_written", 0) > 0)
    finally:
        distributed.shutdown()
    if unreadable:  # every line is out; the status says that some are not verdicts
        raise SpamtuneError(f"{unreadable:,} message file(s) in {mail} could not be read; their lines say error")
    if fail_on_spam and positives:
        raise typer.Exit(1)


def refuse_a_class_named_like_unreadable(labels: list[str], output_format: OutputFormat) -> None:
    """A run with a class named as --mail labels an unreadable message (prepared by hand, or
    before prepare refused it): in label and text lines the two would be one word."""
    from spamtune.mail import UNREADABLE_LABEL

    if UNREADABLE_LABEL in labels and output_format in (OutputFormat.label, OutputFormat.text):
        raise SpamtuneUsageError(
            f"this run has a class named {UNREADABLE_LABEL!r}, the label --mail gives a message it cannot read: with "
            f"--format {output_format.value} the two look alike; use --format tsv or jsonl, where an unreadable message has no p_spam"
        )


def reader_gone(exc: BrokenPipeError, spam_written: bool) -> NoReturn:
    """The reader of the output left (``| head``): the command stops quietly, with status 0, or
    with --fail-on-spam 1 once a spam line was written: that answer is known, and 0 would tell
    the script there was none."""
    exc.exit_code = 1 if spam_written else 0
    raise exc


def _several_ranks(devices: int | None) -> bool:
    """Whether this prediction runs on several ranks (under torchrun, or ``--devices`` > 1);
    ``spamtune.distributed`` imports torch, so client mode never asks."""
    from spamtune import distributed

    return distributed.launched_by_torchrun() or (devices or 1) > 1


def _launched(devices: int | None, run: str | None, data_dir: Path | None, device: str, input_path: Path | None = None) -> bool:
    """``--devices N``: this command ran as N ranks through torch's launcher and is done. The run
    and the ``--input`` file are looked up first, so that a missing one is one line here rather
    than one per rank."""
    from spamtune import distributed

    if distributed.will_launch(devices, device):
        paths.resolve_run(run, paths.data_root(data_dir))
        if input_path is not None:
            _check_readable(input_path)
    return distributed.maybe_launch(devices, sys.argv[1:], device)


def _check_readable(file: Path) -> None:
    """Raise ``message_source``'s error for a ``--input`` that cannot be opened. A FIFO is not
    opened: that would wait for its writer."""
    try:
        if not stat.S_ISFIFO(os.stat(file).st_mode):
            open(file, "rb").close()
    except OSError as exc:
        raise _cannot_read(file, exc) from None


def _cannot_read(file: Path, exc: OSError) -> SpamtuneError:
    return SpamtuneError(f"cannot read {Path(file).absolute()}: {exc.strerror or exc}")


def _classify_all(chunks, world, run_dir, meter, out_file, *, renderer_options, threshold, batch_size, device, precision, mail, long, explain) -> tuple[int, int]:
    """Write one line per message to ``out_file`` (atomically) or stdout; return how many were
    positive, and how many mail messages could not be read (their lines say ``error``)."""
    from spamtune.cli.predict_mail import classify_share, report_unreadable, round_digest
    from spamtune.distributed import share_bounds
    from spamtune.options import TEXT_LONG
    from spamtune.mail_filter import MAIL_CHUNK

    output_format, to_terminal, header = renderer_options
    classifier = _load_classifier(run_dir, world, threshold=threshold, batch_size=batch_size, device=device, precision=precision)
    renderer = Renderer(output_format, classifier.labels, classifier.positive_label, color=to_terminal and _use_color())
    if mail is not None:
        refuse_a_class_named_like_unreadable(classifier.labels, output_format)
    # Every rank must cut the input at the same places. Mail comes in rounds of MAIL_CHUNK
    # messages per rank (one process: the rounds it always had).
    if mail is not None:  # (id, raw) messages one at a time
        chunks = fixed_chunks(([message] for message in chunks), MAIL_CHUNK * world.size)
    elif world.distributed:
        chunks = fixed_chunks(chunks, CHUNK_LINES * world.size)
    with contextlib.ExitStack() as stack:
        if out_file is not None:  # stdout is not needed, and may be closed
            out = _open_out(stack, out_file) if world.is_main else None
        else:
            sys.stdout.flush()
            out = sys.stdout.buffer  # UTF-8 whatever the locale: pipelines and JSON expect it
        if header and world.is_main:
            out.write(_tsv_header(mail is not None, explain).encode())
        watch = ReaderWatch(out if world.is_main else None)  # only rank 0 writes, so only it watches
        hook = watch.after_each_batch(classifier.model)
        counted = positives = unreadable = 0
        started = time.perf_counter()
        try:
            # Rank 0 reads the whole input as every rank does, so its meter is the job's progress.
            with ProgressBar(meter if world.is_main else ReadMeter()) as bar:
                for chunk in chunks:
                    watch.check()
                    mine = world.share(chunk)
                    if mail is not None:
                        if world.is_main:  # every rank reads the whole round: one of them tells
                            unreadable += report_unreadable(chunk, mail)
                        share = (*classify_share(classifier, mine, renderer, long, explain), round_digest(chunk))
                    else:
                        before = counted + share_bounds(len(chunk), world.rank, world.size)[0]
                        share = (*classify_lines_share(classifier, mine, renderer, long or TEXT_LONG, explain, before), None)
                    shares = world.gather_to_main(share) or []
                    if any(digest != share[2] for _, _, digest in shares):
                        raise SpamtuneError(f"the mail source {mail} changed while the ranks read it; run again, or on one process")
                    for share_text, share_positives, _ in shares:
                        out.write(share_text.encode("utf-8", errors="replace"))
                        positives += share_positives
                    if world.is_main:
                        out.flush()
                    counted += len(chunk)
                    bar.update(counted)
        except BrokenPipeError as exc:
            exc.positives_written = positives  # for predict's --fail-on-spam status
            raise
        finally:
            if hook is not None:
                hook.remove()
    seconds = time.perf_counter() - started
    if mail is None and world.is_main:
        common.detail(f"{counted:,} messages, {positives:,} {classifier.positive_label}, in {seconds:.1f}s")
    return world.decide_once((positives, unreadable))


def _tsv_header(mail: bool, explain: bool) -> str:
    if mail:
        return MAIL_EXPLAIN_TSV_HEADER if explain else MAIL_TSV_HEADER
    return EXPLAIN_TSV_HEADER if explain else TSV_HEADER


def _open_out(stack: contextlib.ExitStack, out_file: Path) -> BinaryIO:
    """``--out``: a temporary file renamed onto PATH once complete, so PATH is whole or untouched.
    A device or FIFO (``/dev/null``, ``/dev/stdout``, a named pipe) is written to directly: a
    rename would replace the node itself (run as root, ``/dev/null`` became a regular file)."""
    from spamtune.fsutil import atomic_path, creation_failure

    try:
        special = not stat.S_ISREG(os.stat(out_file).st_mode)
    except OSError:  # not there yet: a new file
        special = False
    if not special:
        return stack.enter_context(open(stack.enter_context(atomic_path(out_file)), "wb"))
    try:
        return stack.enter_context(open(out_file, "wb"))
    except OSError as exc:
        raise SpamtuneError(f"cannot write {out_file}: {creation_failure(out_file, exc)}") from None


def _load_classifier(run_dir: Path, world, *, threshold, batch_size, device, precision):
    """The run's classifier, loaded; rank 0 says which run, where, and the threshold it decides at."""
    from spamtune.infer import SpamClassifier

    started = time.perf_counter()
    # few_shapes: a long input meets a bounded set of batch shapes, each of which the CPU's
    # matmul kernels keep memory for (without it, predict over the SMS file peaked 0.3 GB higher).
    classifier = SpamClassifier.load(
        run_dir, device=device, threshold=threshold, batch_size=batch_size, precision=precision, few_shapes=True
    )
    if world.is_main:
        common.detail(
            f"run {run_dir} on {classifier.device} ({classifier.precision}), loaded in {time.perf_counter() - started:.1f}s"
        )
        if threshold is None and classifier.calibration is not None:
            common.note(classifier.describe_decision())
        common.unfinished_run_note(run_dir)
    return classifier


def classify_lines_share(classifier, lines: list[str], renderer, long: str, explain: bool, messages_before: int) -> tuple[str, int]:
    """A rank's share of a chunk of lines (all of it on one process), as ``classify_share`` is for
    mail: its output lines, in order, and how many were positive. ``messages_before``: how many
    messages of the input come before it, to name a failing one."""
    predictions, explanations = predict_numbered(classifier, lines, long, messages_before, explain) if lines else ([], [])
    text = "".join(map(renderer.line, predictions, explanations))
    return text, sum(p.label == classifier.positive_label for p in predictions)


def fixed_chunks(chunks: Iterator[list[str]], size: int) -> Iterator[list[str]]:
    """The same messages in lists of exactly ``size`` (the last one shorter)."""
    pending: list[str] = []
    for chunk in chunks:
        pending.extend(chunk)
        while len(pending) >= size:
            yield pending[:size]
            del pending[:size]
    if pending:
        yield pending


def predict_numbered(classifier, chunk: list[str], long: str, messages_before: int, explain: bool = False) -> tuple[list[Prediction], list]:
    """``predict_long`` for one chunk, and with ``explain`` the explanations (else Nones) from the
    same verdict pass (``SpamClassifier.predict_explained``). A non-finite probability (a broken
    model, which would print as a confident-looking ``ham nan`` and pass ``--fail-on-spam``) stops
    the run before any line of the chunk is written, naming the message by its place in the whole
    input."""
    from spamtune.infer import NonFiniteProbability
    from spamtune.long_messages import predict_long

    try:
        if explain:
            return classifier.predict_explained(chunk, long)
        return predict_long(classifier, chunk, long), [None] * len(chunk)
    except NonFiniteProbability as exc:
        raise SpamtuneError(
            f"the model gave a non-finite probability ({exc.value}) for message {messages_before + exc.index + 1:,}; "
            "its weights overflow at this precision or are broken, so no answer is given"
        ) from None


def register(app: typer.Typer) -> None:
    common.add_command(app, "predict", predict, help=PREDICT_HELP)
