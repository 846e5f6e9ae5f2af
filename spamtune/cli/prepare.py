"""``spamtune prepare``: labelled texts -> train / validation / test splits in the data root."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import typer

from spamtune import paths
from spamtune.cli import common
from spamtune.cli.common import cell, dataclass_options, stderr_console, with_dataclass_options
from spamtune.options import PrepareOptions

if TYPE_CHECKING:  # the core pulls in pandas and torch, so the command imports it only when run
    from rich.console import Console

    from spamtune.prepare import PreparedSplits


def register(app: typer.Typer) -> None:
    common.add_command(app, "prepare", prepare)


@common.examples(
    ("spamtune prepare", "the book's split of the SMS data: 1,045 / 149 / 300"),
    ("spamtune prepare --dedupe", "drop the 403 repeated texts first"),
    ("spamtune prepare --input mails.csv --text-col body --label-col class", "your own labelled file"),
)
# balance, split, seed, stratify, dedupe and keep_label_case: PrepareOptions' fields, defaults and help.
@with_dataclass_options(dataclass_options(PrepareOptions))
def prepare(
    inputs: Optional[list[str]] = typer.Option(
        None, "--input", "-i", metavar="FILE|LABEL=PATH",
        help="A TSV, CSV or JSONL file of labelled texts ('-' reads stdin; a pipe such as <(cmd) or a FIFO is read once too), or mail as LABEL=PATH (repeatable: a Maildir, an mbox, "
        "a folder of message files or a .eml, every message labelled LABEL). Default: the downloaded SMS Spam Collection.",
    ),
    input_format: Optional[Literal["tsv", "csv", "jsonl"]] = typer.Option(
        None, "--format", help="Format of --input (default: from its extension; give it for stdin or a pipe). A headerless ham/spam TSV is read as the SMS Spam Collection."
    ),
    text_col: Optional[str] = typer.Option(None, "--text-col", help="Column (or JSON key) holding the text (default: text). Matched ignoring case and spaces where one column fits."),
    label_col: Optional[str] = typer.Option(None, "--label-col", help="Column (or JSON key) holding the label (default: label). Matched as --text-col is."),
    data_dir: Optional[Path] = common.data_dir_option(),
    **options,
) -> None:
    """Balance, shuffle and split labelled texts into train.csv, validation.csv and test.csv.

    The default is the book's chapter 6 recipe: undersample ham to spam's count, shuffle with random_state 123, cut 70% / 10% / 20%. A summary goes to stderr; the written paths to stdout.
    """
    from spamtune.interrupts import sigterm_as_interrupt
    from spamtune.labelled_texts import read_input
    from spamtune.prepare import parse_split, prepare_splits, write_prepared

    root = paths.data_root(data_dir)
    options = PrepareOptions(**{**options, "split": parse_split(options["split"])})
    # SIGTERM (`timeout`, a scheduler) as Ctrl-C: the temporaries being written are removed, where
    # ending at once would leave them in the data root, as large as the splits and never cleaned.
    with sigterm_as_interrupt():
        source = read_input(
            root, inputs or [], input_format, text_col, label_col, keep_label_case=options.keep_label_case
        )
        prepared = prepare_splits(source, options)
        written = write_prepared(root, prepared)
    _render_summary(stderr_console(), prepared)
    for path in written:
        typer.echo(common.one_line(str(path)))  # a data root named with an escape sequence or a line break: one line, shown


def _render_summary(console: Console, prepared: PreparedSplits) -> None:
    source, options = prepared.source, prepared.options
    per_label = " / ".join(f"{count:,} {label}" for label, count in source.label_counts().items())
    if source.mail_sources is None:
        console.print(common.one_line(f"read {len(source.texts):,} rows ({per_label}) from {source.name}"))
    else:
        for c in source.mail_sources:
            console.print(common.one_line(
                f"{c.label}: {c.messages:,} messages from {c.path}: {c.kept:,} kept, {c.damaged:,} damaged "
                f"(kept with what could be read), {c.empty:,} empty (left out), {c.unreadable:,} unreadable (left out), "
                f"{c.truncated:,} read on their first MiB"
            ))
        console.print(f"read {len(source.texts):,} messages ({per_label})")
    if source.label_case_folded:
        console.print("labels compared ignoring case, named in lower case (--keep-label-case keeps Spam and spam apart)")
    # Warnings go where the library's do, so that --quiet, which silences this console, keeps them.
    for label, spellings in source.label_spellings_merged.items():
        how = "differ only in case" if len({s.casefold() for s in spellings}) == 1 else "mean the same value"
        common.warn(f"labels that {how} were merged into {label!r}: {', '.join(map(repr, spellings))}")
    if prepared.empty_texts_dropped:
        common.warn(f"dropped {prepared.empty_texts_dropped:,} rows whose text is empty (or only spaces)")
    if prepared.duplicates_dropped is not None:
        console.print(f"dropped {prepared.duplicates_dropped:,} duplicate texts (kept the first of each)")
    if prepared.rows_per_label_after_balance is not None:
        console.print(f"balanced: {prepared.rows_per_label_after_balance:,} rows per label")

    from rich.table import Table

    counts = prepared.counts()
    table = Table(title="prepared splits", title_justify="left")
    table.add_column("split")
    for label in source.label_map:
        table.add_column(cell(label), justify="right")
    table.add_column("total", justify="right")
    for heading in ("tokens min", "median", "p95", "max"):
        table.add_column(heading, justify="right")
    for name, per_label in counts.items():
        lengths = prepared.token_lengths[name]
        table.add_row(
            name,
            *(f"{n:,}" for n in per_label.values()),
            f"{sum(per_label.values()):,}",
            *(f"{value:g}" for value in (lengths.min, lengths.median, lengths.p95, lengths.max)),
        )
    common.print_table(console, table)

    leaks = prepared.leakage
    line = (
        f"leakage: {leaks['test']:,} of {len(prepared.splits['test']):,} test texts and "
        f"{leaks['validation']:,} of {len(prepared.splits['validation']):,} validation texts also appear in train"
    )
    if any(leaks.values()) and not options.dedupe:
        line += " (--dedupe drops repeated texts first)"
    console.print(line)

