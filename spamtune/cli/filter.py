"""``spamtune filter``: one mail message on stdin, the same message with a verdict on stdout."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer

from spamtune.cli import common
from spamtune.cli.common import LongMode, long_option
from spamtune.errors import OptionError, SpamtuneError, SpamtuneUsageError, TemporaryFailure
from spamtune.options import DEFAULT_LONG as LONG_DEFAULT

FILTER_HELP = (
    "Classify one mail message read on stdin and write it to stdout with two header lines added at the end "
    "of its header block, as spamc does for procmail, maildrop or sieve:\n\n"
    "X-Spamtune-Status: Yes|No, p_spam=0.987, threshold=0.5\n\n"
    "X-Spamtune-Run: RUN_NAME; spamtune VERSION\n\n"
    "Every other byte is the input's (line endings, 8-bit bytes, folding), so deleting the two lines gives the "
    "message back exactly. A message larger than 1 MiB is classified on its first MiB and still passed through "
    "whole.\n\n"
    "Exit status: 0 when the message was classified; 2 for a wrong command line, before anything is read "
    "(nothing is written). When the message cannot be classified (no run, a broken run, a model failure, a "
    "service that cannot be reached, an empty stdin) one Error: line goes to stderr and --on-error decides: fail (the default) "
    "writes the message unchanged and exits 1; pass writes it unchanged and exits 0, so that it is delivered "
    "unfiltered; tempfail writes nothing and exits 75 (EX_TEMPFAIL, as spamc -x does), so that the mail "
    "server keeps the message and retries later (Postfix pipe(8), a content filter script). With tempfail "
    "every failure but a wrong command line exits 75, even one after part of the message was written (the "
    "input unreadable midway, stdout broken, a Ctrl-C): the output of a deferred delivery is to be thrown away. With fail "
    "and pass a message that cannot be read or written whole (stdout's reader gone) exits 1, even with pass.\n\n"
    "With --server URL (or SPAMTUNE_SERVER) a running `spamtune serve` classifies the message: no model load, "
    "no torch import; the service's run and reading of long messages apply."
)


ON_ERROR_MODES = ("fail", "pass", "tempfail")
ON_ERROR_HELP = (
    "A message that cannot be classified: fail: written unchanged, exit 1; pass: written unchanged, exit 0 "
    "(delivered unfiltered); tempfail: nothing written, exit 75 (the mail server keeps it and retries)."
)


@common.examples(
    ("spamtune filter < message.eml", "the message with its X-Spamtune-Status on stdout"),
    ('| spamtune filter --run 20261125-101500-tiny-all', "in procmail: a recipe line with a run by name"),
    ("spamtune filter --threshold 0.9 < message.eml | grep '^X-Spamtune'", "stricter; see the verdict"),
    ("spamtune filter --on-error tempfail --run /srv/spamtune/run", "in a Postfix content filter: defer the mail on a failure"),
)
def filter_mail(
    run: Optional[str] = common.run_option(),
    data_dir: Optional[Path] = common.data_dir_option(),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Spam when the spam probability is at least this. " + common.THRESHOLD_SCOPE,
        show_default="the run's threshold",
    ),
    long: Optional[LongMode] = long_option(LONG_DEFAULT),
    device: str = common.device_option("cpu", "Where to compute (cpu: one message needs no GPU start-up)."),
    precision: str = common.precision_option(),
    server: Optional[str] = typer.Option(
        None, "--server", metavar="URL", envvar="SPAMTUNE_SERVER",
        help="Ask a running `spamtune serve` at URL instead of loading a model here (no torch import).",
    ),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="SPAMTUNE_API_KEY", help="With --server: the service's API key (prefer the variable)."
    ),
    on_error: str = common.choice_option("fail", "--on-error", ON_ERROR_MODES, ON_ERROR_HELP),
) -> None:
    """Add X-Spamtune-Status to one message (help: FILTER_HELP)."""
    from spamtune.mail_filter import filter_message, verdict_function

    defer = on_error == "tempfail"
    with _deferred_if_interrupted(defer):
        if sys.stdin is None:
            raise SpamtuneUsageError("filter reads one message on stdin, but this process has none")
        try:
            common.require_stdout()  # before the model loads; the mail server keeps the message
        except SpamtuneError as exc:
            raise TemporaryFailure(f"message deferred: {exc}") if defer else exc

        classify, load_error = None, None
        if server:  # client mode: the service classifies, torch is never imported
            from spamtune.cli.remote import remote_mail_verdict

            classify = remote_mail_verdict(server, api_key, threshold)
        else:
            try:
                from spamtune.infer import SpamClassifier

                options = {} if threshold is None else {"threshold": threshold}
                classifier = SpamClassifier.load(run, device=device, data_dir=data_dir, precision=precision, **options)
                classify = verdict_function(classifier, long)
            except Exception as exc:  # reported after passing the message on (or instead, with tempfail)
                load_error = exc
        if load_error is not None and defer:  # nothing read, nothing written: the mail server retries
            raise _unclassified(load_error, on_error)
        try:
            sys.stdout.flush()
            outcome = filter_message(sys.stdin.buffer, sys.stdout.buffer, classify, pass_through=not defer)
        except Exception as exc:  # reading or writing the message failed, perhaps midway
            if defer:
                raise TemporaryFailure(f"message deferred while being copied: {_reason(exc)}") from exc
            if isinstance(exc, BrokenPipeError):
                # Not the quiet end of other commands whose reader left: here the reader is the mail
                # server, which must not take a message cut short for the filtered one.
                raise SpamtuneError(f"message not passed on whole: {_reason(exc)}") from exc
            raise  # as any command's: one line
        error = load_error or outcome.error
        if error is not None:
            raise _unclassified(error, on_error)


@contextlib.contextmanager
def _deferred_if_interrupted(defer: bool) -> Iterator[None]:
    """With tempfail, a Ctrl-C defers the message as every other failure does: 130, the exit
    status of an interrupted command, is no sysexits status, which a mail server would not read
    as "try again later"."""
    try:
        yield
    except KeyboardInterrupt:
        if not defer:
            raise
        raise TemporaryFailure("message deferred: interrupted") from None


def _unclassified(error: Exception, on_error: str) -> SpamtuneError:
    """What ``--on-error`` makes of a message that could not be classified: its one line, its exit status."""
    if on_error == "tempfail":
        return TemporaryFailure(f"message deferred, nothing written: {_reason(error)}")
    failure = SpamtuneError(f"message passed through unclassified: {_reason(error)}")
    if on_error == "pass":
        failure.exit_code = 0  # said on stderr, but the mail server delivers the message as it is
    return failure


def _reason(error: Exception) -> str:
    """The error in one line: a SpamtuneError's message says it all (an option named as its
    flag, as other commands name it); anything else is named."""
    if isinstance(error, OptionError):
        return error.naming(common.flag(error.option))
    return str(error) if isinstance(error, SpamtuneError) else f"{type(error).__name__}: {error}"


def register(app: typer.Typer) -> None:
    common.add_command(
        app, "filter", filter_mail, help=FILTER_HELP,
        short_help="Classify one mail message read on stdin and write it to stdout with its verdict in two added "
        "header lines, as spamc does for procmail, maildrop or sieve.",
    )
