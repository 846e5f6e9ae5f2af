"""``spamtune predict --server URL`` and ``spamtune filter --server URL``: the same commands,
answered by a running ``spamtune serve``.

Messages are read and answers written exactly as locally (same chunks, same renderer, same
header insertion, same exit status), but the classifying happens in the service over HTTP:
nothing here imports torch or loads a model, so a call costs an interpreter start and a round trip.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from spamtune.errors import SpamtuneError, SpamtuneUsageError

if TYPE_CHECKING:
    from spamtune.mail_filter import Verdict

# Options of local classification that the service decides for itself: its run, its reading of
# long messages (a mail message in chunks, a line of text by its head, as predict's defaults).
LOCAL_ONLY = {"run": "--run", "data_dir": "--data-dir", "device": "--device", "precision": "--precision",
              "batch_size": "--batch-size", "long": "--long"}  # fmt: skip


@dataclass(frozen=True)
class RemotePrediction:
    """What the renderer of ``predict`` reads from a prediction, filled from the service's answer."""

    text: str
    label: str
    probability: float

    @property
    def p_spam(self) -> float:
        return self.probability


def given_on_command_line(name: str) -> bool:
    """Whether the user set option ``name`` (on the command line or by its variable), not its default."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - Typer without its own copy of Click
        from click import get_current_context
    ctx = get_current_context(silent=True)
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def refuse_local_options() -> None:
    local = [flag for name, flag in LOCAL_ONLY.items() if given_on_command_line(name)]
    if local:
        raise SpamtuneUsageError(f"{', '.join(local)} cannot be used with --server: the service's own run and settings apply")


def remote_mail_verdict(server: str, api_key: str | None, threshold: float | None) -> Callable[[bytes], Verdict]:
    """``classify`` for ``filter_message``: the service's verdict on the message's first bytes.

    Wrong options are refused here, before any input is read; a failure to reach the service
    happens inside ``classify``, so the filter passes the message through unchanged."""
    from spamtune.mail_filter import Verdict  # here, so that predict's cold start skips the email package

    refuse_local_options()

    def classify(raw: bytes) -> Verdict:
        from spamtune.client import client_from_env

        client = client_from_env(server, api_key)
        answer = client.classify_mail(raw, threshold)
        return Verdict(answer.label == client.model()["positive_label"], answer.p_spam, answer.threshold, answer.run)

    return classify


def predict_remotely(
    chunks: Iterable[list], server: str, api_key: str | None, output_format, threshold: float, fail_on_spam: bool,
    header: bool = False,
    explain: bool = False,
    mail: Path | None = None,
) -> None:
    """Classify every chunk with the service at ``server`` and print it as local ``predict`` would;
    with ``explain``, with the explanations the service sends (the same spans as local ones).
    ``mail``: the chunks are a mail source's ``(id, raw)`` messages, each sent to ``/v1/classify/mail``."""
    from spamtune.cli.predict import OutputFormat, Renderer, _stdout_is_terminal, _tsv_header, _use_color, reader_gone
    from spamtune.client import client_from_env

    refuse_local_options()
    requested = threshold if given_on_command_line("threshold") else None  # else the service's threshold
    client = client_from_env(server, api_key)
    info = client.model()
    positive = info["positive_label"]
    if output_format is None:
        output_format = OutputFormat.text if _stdout_is_terminal() else OutputFormat.tsv
    if mail is not None:
        from spamtune.cli.predict import refuse_a_class_named_like_unreadable

        refuse_a_class_named_like_unreadable(info["labels"], output_format)
    renderer = Renderer(output_format, info["labels"], positive, color=_use_color())
    sys.stdout.flush()
    out = sys.stdout.buffer
    if header:
        out.write(_tsv_header(mail is not None, explain).encode())
    any_positive = False
    unreadable: list[str] = []
    if mail is None:
        answered = _text_lines(client, chunks, renderer, requested, explain)
    else:
        answered = _mail_lines(client, chunks, renderer, requested, explain, mail, unreadable)
    try:
        for lines, positives in answered:
            out.write(lines.encode("utf-8", errors="replace"))
            out.flush()
            any_positive = any_positive or positives > 0
    except BrokenPipeError as exc:
        reader_gone(exc, fail_on_spam and any_positive)
    if unreadable:  # every line is out; the status says that some are not verdicts
        raise SpamtuneError(f"{len(unreadable):,} message file(s) in {mail} could not be read; their lines say error")
    if fail_on_spam and any_positive:
        raise typer.Exit(1)


def _text_lines(client, chunks: Iterable[list[str]], renderer, requested: float | None, explain: bool) -> Iterator[tuple[str, int]]:
    """Each chunk of lines of text as the service classifies it: its output lines and how many are positive."""
    budget, read = client.text_budget(), 0
    for chunk in chunks:
        sent = [_within_budget(text, budget, read + n) for n, text in enumerate(chunk, 1)]
        verdicts = client.classify(sent, requested, explain)
        predictions = [RemotePrediction(text, v.label, v.p_spam) for text, v in zip(chunk, verdicts)]
        explanations = [getattr(v, "explanation", None) for v in verdicts]
        yield "".join(map(renderer.line, predictions, explanations)), sum(p.label == renderer.positive for p in predictions)
        read += len(chunk)


# Messages of a mail source in flight to the service at once: its dynamic batcher classifies
# those that arrive together in one pass. 200 short messages to a gpt2-small service (2 cores):
# 6.6 s one at a time, 5.0 s four at a time, 3.5 s sixteen (local predict --mail, its model's
# load included: 3.4 s). At most this many messages (each at most a MiB) are held at once.
MAIL_REQUESTS_IN_FLIGHT = 16


def _mail_lines(
    client, messages: Iterable, renderer, requested: float | None, explain: bool, source: Path, unreadable: list[str]
) -> Iterator[tuple[str, int]]:
    """Each ``(id, raw)`` message of a mail source as the service classifies it (one request each,
    ``MAIL_REQUESTS_IN_FLIGHT`` at a time): its line as local ``predict --mail`` writes it, in the
    source's order. A file that could not be read keeps its line (label ``error``), is warned of,
    and is added to ``unreadable``."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from spamtune.cli.predict_mail import render_line, report_unreadable
    from spamtune.mail import MAX_MESSAGE_BYTES, UNREADABLE_LABEL, Unreadable
    from spamtune.mail_filter import MailPrediction

    # The service reads a message's first MiB, as predict does: more need not travel.
    limit = min(MAX_MESSAGE_BYTES, int(client.model().get("limits", {}).get("max_mail_bytes", MAX_MESSAGE_BYTES)))

    def sent(message_id: str, raw: bytes) -> bytes:
        if len(raw) > limit and limit < MAX_MESSAGE_BYTES:
            from spamtune.cli import common

            common.warn(
                f"message {message_id} is larger than the service takes ({limit:,} bytes, its --max-mail-bytes): "
                "only its start is classified"
            )
        return raw[:limit]

    def line(message_id: str, raw, answer) -> tuple[str, int]:
        if isinstance(raw, Unreadable):
            report_unreadable([(message_id, raw)], source)
            unreadable.append(message_id)
            p = MailPrediction(message_id, UNREADABLE_LABEL, None, True, raw.reason)
        else:
            v = answer.result()
            p = MailPrediction(message_id, v.label, v.p_spam, v.damaged, explanation=v.explanation)
        return render_line(renderer, p, explain), int(p.label == renderer.positive and p.error is None)

    waiting: deque = deque()
    with ThreadPoolExecutor(MAIL_REQUESTS_IN_FLIGHT, thread_name_prefix="spamtune-client") as pool:
        try:
            for message_id, raw in messages:
                answer = None if isinstance(raw, Unreadable) else pool.submit(client.classify_mail, sent(message_id, raw), requested, explain)
                waiting.append((message_id, raw, answer))
                if len(waiting) > MAIL_REQUESTS_IN_FLIGHT:
                    yield line(*waiting.popleft())
            while waiting:
                yield line(*waiting.popleft())
        finally:  # stopped early (an error, Ctrl-C, the reader gone): what is not sent yet is not
            for _, _, answer in waiting:
                if answer is not None:
                    answer.cancel()


def _within_budget(text: str, budget: int, number: int) -> str:
    """What is sent of message ``number``: its start that one request can hold, with a warning when
    that is not all of it, as a line over 1 MiB is read locally. Refused, the message stopped
    the whole stream (every later line unanswered) over a line local predict classifies."""
    from spamtune.cli import common
    from spamtune.client import fitting_start

    sent = fitting_start(text, budget)
    if len(sent) < len(text):
        common.warn(
            f"message {number:,} is larger than the service takes in a request: only its first "
            f"{len(sent):,} of {len(text):,} characters are classified (its output line holds it whole)"
        )
    return sent
