"""``spamtune filter``: one mail message on stdin, the same message with a verdict on stdout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from spamtune.cli import common
from spamtune.cli.common import LongMode, long_option
from spamtune.options import DEFAULT_LONG as LONG_DEFAULT

FILTER_HELP = (
    "Classify one mail message read on stdin and write it to stdout with two header lines added at the end "
    "of its header block, as spamc does for procmail, maildrop or sieve:\n\n"
    "X-Spamtune-Status: Yes|No, p_spam=0.987, threshold=0.5\n\n"
    "X-Spamtune-Run: RUN_NAME; spamtune VERSION\n\n"
    "Every other byte is the input's (line endings, 8-bit bytes, folding), so deleting the two lines gives the "
    "message back exactly. A message larger than 1 MiB is classified on its first MiB and still passed through "
    "whole. Exit status: 0 when the message was classified; 1 when it could not be (no run, a broken run, a "
    "model failure): the message is then written unchanged and the error goes to stderr; 2 for a wrong "
    "command line, before anything is read.\n\n"
    "With --server URL (or SPAMTUNE_SERVER) a running `spamtune serve` classifies the message: no model load, "
    "no torch import; the service's run and reading of long messages apply."
)


@common.examples(
    ("spamtune filter < message.eml", "the message with its X-Spamtune-Status on stdout"),
    ('| spamtune filter --run 20261125-101500-tiny-all', "in procmail: a recipe line with a run by name"),
    ("spamtune filter --threshold 0.9 < message.eml | grep '^X-Spamtune'", "stricter; see the verdict"),
)
def filter_mail(
    run: Optional[str] = common.run_option(),
    data_dir: Optional[Path] = common.data_dir_option(),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Spam when the spam probability is at least this.",
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
) -> None:
    """Add X-Spamtune-Status to one message (help: FILTER_HELP)."""
    from spamtune.errors import SpamtuneError, SpamtuneUsageError
    from spamtune.mail_filter import filter_message, verdict_function

    if sys.stdin is None:
        raise SpamtuneUsageError("filter reads one message on stdin, but this process has none")
    common.require_stdout()  # before the model loads; the mail server keeps the message

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
        except Exception as exc:  # the message must still go through: report after passing it on
            load_error = exc
    sys.stdout.flush()
    outcome = filter_message(sys.stdin.buffer, sys.stdout.buffer, classify)
    error = load_error or outcome.error
    if error is not None:
        reason = str(error) if isinstance(error, SpamtuneError) else f"{type(error).__name__}: {error}"
        raise SpamtuneError(f"message passed through unclassified: {reason}")


def register(app: typer.Typer) -> None:
    common.add_command(app, "filter", filter_mail, help=FILTER_HELP)
