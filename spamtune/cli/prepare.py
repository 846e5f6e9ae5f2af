"""``spamtune prepare``: labelled texts -> train / validation / test splits in the data root."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import typer

from spamtune import paths

if TYPE_CHECKING:  # the core pulls in pandas and torch, so the command imports it only when run
    from rich.console import Console

    from spamtune.prepare import PreparedSplits


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)


# The defaults below are spamtune.prepare's (DEFAULT_SPLIT, DEFAULT_SEED, ...), spelled out here
# so that `spamtune --help` does not import the core.
def prepare(
    input_file: Optional[Path] = typer.Option(
        None, "--input", "-i", help="A TSV, CSV or JSONL file of labelled texts. Default: the downloaded SMS Spam Collection."
    ),
    input_format: Optional[Literal["tsv", "csv", "jsonl"]] = typer.Option(
        None, "--format", help="Format of --input (default: from its extension). A headerless ham/spam TSV is read as the SMS Spam Collection."
    ),
    text_col: Optional[str] = typer.Option(None, "--text-col", help="Column (or JSON key) holding the text (default: text)."),
    label_col: Optional[str] = typer.Option(None, "--label-col", help="Column (or JSON key) holding the label (default: label)."),
    keep_label_case: bool = typer.Option(
        False, "--keep-label-case", help="Treat labels that differ only in case (Spam, spam) as different classes. Default: fold them to lower case."
    ),
    balance: Literal["undersample", "none"] = typer.Option(
        "undersample", "--balance", help="undersample: cut every label to the rarest one's count (the book's recipe); none: keep all rows."
    ),
    split: str = typer.Option("0.7,0.1,0.2", "--split", help="Train, validation and test fractions; they must sum to 1."),
    seed: int = typer.Option(123, "--seed", help="Random state of the undersampling and the shuffle."),
    stratify: bool = typer.Option(False, "--stratify", help="Cut each label separately so every split keeps the label proportions."),
    dedupe: bool = typer.Option(False, "--dedupe", help="Drop repeated texts (keeping the first) before anything else."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root (default: $SPAMTUNE_HOME, else ./data)."),
) -> None:
    """Balance, shuffle and split labelled texts into train.csv, validation.csv and test.csv.

    The default is the book's chapter 6 recipe: undersample ham to spam's count, shuffle with
    random_state 123, cut 70% / 10% / 20%. A summary goes to stderr; the written paths to stdout.
    """
    from spamtune.prepare import PrepareOptions, parse_split, prepare_splits, read_labelled_texts, resolve_input, write_prepared

    root = paths.data_root(data_dir)
    options = PrepareOptions(balance=balance, split=parse_split(split), seed=seed, stratify=stratify, dedupe=dedupe)
    source = read_labelled_texts(
        resolve_input(root, input_file), input_format, text_col, label_col, keep_label_case=keep_label_case
    )
    prepared = prepare_splits(source, options)
    written = write_prepared(root, prepared)
    from rich.console import Console

    _render_summary(Console(stderr=True), prepared)
    for path in written:
        typer.echo(path)


def _render_summary(console: Console, prepared: PreparedSplits) -> None:
    source, options = prepared.source, prepared.options
    per_label = " / ".join(f"{count:,} {label}" for label, count in source.label_counts().items())
    _say(console, f"read {len(source.texts):,} rows ({per_label}) from {source.path}")
    if source.label_case_folded:
        _say(console, "labels compared ignoring case, named in lower case (--keep-label-case keeps Spam and spam apart)")
    for label, spellings in source.label_spellings_merged.items():
        _say(console, f"warning: labels that differ only in case were merged into {label!r}: {', '.join(map(repr, spellings))}")
    if prepared.empty_texts_dropped:
        _say(console, f"warning: dropped {prepared.empty_texts_dropped:,} rows whose text is empty (or only spaces)")
    if prepared.duplicates_dropped is not None:
        _say(console, f"dropped {prepared.duplicates_dropped:,} duplicate texts (kept the first of each)")
    if prepared.rows_per_label_after_balance is not None:
        _say(console, f"balanced: {prepared.rows_per_label_after_balance:,} rows per label")

    from rich.table import Table
    from rich.text import Text

    counts = prepared.counts()
    table = Table(title="prepared splits", title_justify="left")
    table.add_column("split")
    for label in source.label_map:
        table.add_column(Text(label), justify="right")  # Text: a label is never read as markup
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
    console.print(table)

    leaks = prepared.leakage
    line = (
        f"leakage: {leaks['test']:,} of {len(prepared.splits['test']):,} test texts and "
        f"{leaks['validation']:,} of {len(prepared.splits['validation']):,} validation texts also appear in train"
    )
    if any(leaks.values()) and not options.dedupe:
        line += " (--dedupe drops repeated texts first)"
    _say(console, line)


def _say(console: Console, line: str) -> None:
    """A plain line on stderr: no markup (paths may hold brackets), never wrapped (stays greppable)."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)
