"""``spamtune predict``: classify messages from arguments, a file or stdin, one output line each.

Input is read as bytes in bounded chunks and every chunk's results are written and flushed
before the next is read, so a pipeline of any length runs in constant memory and sees its
answers as they come. torch and the model are imported inside the command only.
"""

from __future__ import annotations

import enum
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import typer

from spamtune.errors import SpamtuneError, SpamtuneUsageError
from spamtune.lines import strip_line_end

if TYPE_CHECKING:
    from spamtune.infer import Prediction

# Messages classified (and written) per round: enough to fill length-sorted batches, small
# enough that memory stays flat and results flow steadily.
CHUNK_LINES = 2048
READ_SIZE = 1 << 16


class OutputFormat(str, enum.Enum):
    text = "text"
    tsv = "tsv"
    jsonl = "jsonl"
    label = "label"


def read_message_chunks(
    stream: BinaryIO, chunk_lines: int = CHUNK_LINES, read_size: int = READ_SIZE
) -> Iterator[list[str]]:
    """The lines of a byte stream as messages, in lists of at most ``chunk_lines``.

    A line ends at ``\\n`` only; a ``\\r`` before it is dropped (CRLF files), empty lines are
    messages, and bytes that are not UTF-8 become U+FFFD. A chunk is handed over when it is
    full or when the input has nothing more ready (a short read from a pipe or terminal), so a
    fast producer fills whole batches while a slow one gets each answer at once. Memory holds
    one read, one chunk and the line being assembled.
    """
    read = getattr(stream, "read1", stream.read)
    buffer = bytearray()
    pending: list[str] = []
    while data := read(read_size):
        buffer += data
        end = buffer.rfind(b"\n")
        if end >= 0:
            pending.extend(_decode_line(line) for line in bytes(buffer[:end]).split(b"\n"))
            del buffer[: end + 1]
        while len(pending) >= chunk_lines:
            yield pending[:chunk_lines]
            del pending[:chunk_lines]
        if pending and len(data) < read_size:
            yield pending
            pending = []
    if buffer:  # a last line without a newline
        pending.append(_decode_line(bytes(buffer)))
    if pending:
        yield pending


def _decode_line(raw: bytes) -> str:
    return strip_line_end(raw.decode("utf-8", errors="replace"))


def _argument_text(arg: str) -> str:
    """A command-line argument as text: bytes the OS could not decode become U+FFFD, as in stdin."""
    return os.fsencode(arg).decode("utf-8", errors="replace")


def _stdin_is_terminal() -> bool:
    return sys.stdin is None or sys.stdin.isatty()


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def message_source(messages: list[str], file: Path | None) -> Iterator[list[str]]:
    """Chunks of messages from the command line: arguments in order (``-`` = the lines of stdin),
    else ``--file``, else stdin when it is not a terminal. Problems surface here, before the
    model loads."""
    if file is not None and messages:
        raise SpamtuneUsageError("give messages as arguments or with --file, not both")
    if file is not None and str(file) != "-":
        try:
            stream = open(file, "rb")  # noqa: SIM115 - closed by _lines_then_close once read
        except OSError as exc:
            raise SpamtuneError(f"cannot read {file}: {exc.strerror or exc}") from None
        return _lines_then_close(stream)
    if file is not None:
        messages = ["-"]
    if not messages:
        if _stdin_is_terminal():
            raise SpamtuneUsageError(
                "no messages to classify: pass them as arguments, with --file PATH, "
                "or on stdin (e.g. `spamtune predict - < messages.txt`)"
            )
        messages = ["-"]
    elif messages.count("-") > 1:
        raise SpamtuneUsageError("'-' (read stdin) can be given only once")
    elif "-" in messages and _stdin_is_terminal():
        if sys.stdin is None:
            raise SpamtuneUsageError("'-' reads stdin, but this process has none")
        print("Reading messages from the terminal, one per line; Ctrl-D to end.", file=sys.stderr)
    return _argument_chunks(messages)


def _lines_then_close(stream: BinaryIO) -> Iterator[list[str]]:
    with stream:
        yield from read_message_chunks(stream)


def _argument_chunks(messages: list[str]) -> Iterator[list[str]]:
    literal: list[str] = []
    for message in messages:
        if message == "-":
            if literal:
                yield literal
                literal = []
            yield from read_message_chunks(sys.stdin.buffer)
        else:
            literal.append(_argument_text(message))
            if len(literal) == CHUNK_LINES:
                yield literal
                literal = []
    if literal:
        yield literal


def _one_line(text: str) -> str:
    """TSV text column: tabs and line breaks become spaces, so a message stays one field of one line."""
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _printable(text: str) -> str:
    """Terminal text column: every control character (escape sequences included) becomes a space."""
    return "".join(" " if ord(c) < 32 or 127 <= ord(c) < 160 else c for c in text)


class Renderer:
    """Turns predictions into output lines, each ending in a newline."""

    def __init__(self, fmt: OutputFormat, labels: list[str], positive: str, color: bool):
        self.fmt = fmt
        self.positive = positive
        self.width = max(map(len, labels))
        self.color = color

    def line(self, p: Prediction) -> str:
        if self.fmt is OutputFormat.tsv:
            return f"{p.label}\t{p.probability:.4f}\t{_one_line(p.text)}\n"
        if self.fmt is OutputFormat.jsonl:
            record = {"text": p.text, "label": p.label, "probability": round(p.probability, 6)}
            return json.dumps(record, ensure_ascii=False) + "\n"
        if self.fmt is OutputFormat.label:
            return p.label + "\n"
        label = p.label.ljust(self.width)
        if self.color:  # bold red for the positive class, green for the others
            label = f"\x1b[1;31m{label}\x1b[0m" if p.label == self.positive else f"\x1b[32m{label}\x1b[0m"
        return f"{label}  p({self.positive})={p.probability:.3f}  {_printable(p.text)}\n"


def _use_color() -> bool:
    return _stdout_is_terminal() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


PREDICT_HELP = (
    "Classify messages as spam or ham: exactly one output line per message, in input order.\n\n"
    "Messages come from the arguments (each one a message), from --file, or from stdin ('-', or no arguments "
    "with stdin not a terminal). In a file or on stdin each line is a message: lines end at \\n only, a trailing "
    "\\r is dropped (CRLF files), empty lines are classified too, and invalid UTF-8 is replaced by U+FFFD. "
    "Input is read and answered in chunks, so a large stream runs in constant memory and results appear as they come.\n\n"
    "A message longer than the run's max length is cut to its first tokens (its start is kept). In tsv and text "
    "output, tabs and line breaks inside a message become spaces; jsonl keeps the message exactly. The probability "
    "is always that of spam, whatever the label.\n\n"
    "With --fail-on-spam the exit status is 1 when any message is spam, 0 when none is (errors also exit 1, "
    "with an 'Error:' line on stderr; usage errors exit 2)."
)


def predict(
    messages: list[str] | None = typer.Argument(
        None, metavar="MESSAGE", help="Messages to classify, one per argument; '-' reads stdin.", show_default=False
    ),
    file: Path | None = typer.Option(
        None, "--file", "-f", metavar="PATH", help="Read messages from PATH, one per line ('-' = stdin).", dir_okay=False
    ),
    run: Path | None = typer.Option(
        None, "--run", metavar="RUN_DIR", help="Fine-tuned run folder.",
        show_default="the latest run in the data root", file_okay=False,
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Data root holding runs/.", show_default="$SPAMTUNE_HOME, else ./data"
    ),
    output_format: OutputFormat | None = typer.Option(
        None, "--format", case_sensitive=False,
        help="text: label, spam probability, message (readable); tsv: label<TAB>probability<TAB>message; "
        "jsonl: one JSON object per line; label: the label only.",
        show_default="text on a terminal, else tsv",
    ),
    threshold: float = typer.Option(
        0.5, "--threshold", min=0.0, max=1.0, help="Label a message spam when its spam probability is at least this."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Messages per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps (auto: CUDA, then MPS, then CPU)."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (bf16 where the hardware runs it natively, else fp32), fp32, bf16 or fp16."
    ),
    fail_on_spam: bool = typer.Option(
        False, "--fail-on-spam",
        help="Exit with status 1 when any message is spam (after writing all output), like an inverted grep -q.",
    ),
) -> None:
    """Classify chunk by chunk, writing and flushing each chunk's lines before reading on (help: PREDICT_HELP)."""
    chunks = message_source(messages or [], file)

    from spamtune.infer import SpamClassifier

    classifier = SpamClassifier.load(
        run, device=device, data_dir=data_dir, threshold=threshold, batch_size=batch_size, precision=precision
    )
    if output_format is None:
        output_format = OutputFormat.text if _stdout_is_terminal() else OutputFormat.tsv
    renderer = Renderer(output_format, classifier.labels, classifier.positive_label, color=_use_color())
    sys.stdout.flush()
    out = sys.stdout.buffer  # UTF-8 whatever the locale: pipelines and JSON expect it
    any_positive = False
    done = 0
    for chunk in chunks:
        predictions = classifier.predict(chunk)
        check_probabilities(predictions, done)
        done += len(predictions)
        out.write("".join(map(renderer.line, predictions)).encode("utf-8", errors="replace"))
        out.flush()
        any_positive = any_positive or any(p.label == classifier.positive_label for p in predictions)
    if fail_on_spam and any_positive:
        raise typer.Exit(1)


def check_probabilities(predictions: list[Prediction], messages_before: int) -> None:
    """A NaN or infinite probability is a broken model, not an answer: it would print as a
    confident-looking ``ham nan`` and pass ``--fail-on-spam``. Stop with an error instead,
    before any line of the chunk is written."""
    for number, prediction in enumerate(predictions, start=messages_before + 1):
        if not math.isfinite(prediction.probability):
            raise SpamtuneError(
                f"the model gave a non-finite probability ({prediction.probability}) for message {number:,}; "
                "its weights overflow at this precision or are broken, so no answer is given"
            )


def register(app: typer.Typer) -> None:
    app.command("predict", help=PREDICT_HELP)(predict)
