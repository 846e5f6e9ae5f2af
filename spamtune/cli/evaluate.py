"""``spamtune evaluate``: accuracy, per-class precision / recall / F1, confusion matrix and
ROC-AUC of a run, optionally beside a TF-IDF baseline.

``--format json`` prints one JSON object on stdout; the table format draws rich tables on
stderr and prints a one-line result on stdout. torch is imported inside the command only.
"""

from __future__ import annotations

import contextlib
import enum
from pathlib import Path

from typing import TYPE_CHECKING, Literal, Optional

import typer

from spamtune.cli import common
from spamtune.cli.common import LongMode, cell, long_option, stderr_console
from spamtune.errors import SpamtuneError, SpamtuneUsageError

if TYPE_CHECKING:  # rich is imported when a command runs, not when the CLI starts
    from rich.console import Console


class ReportFormat(str, enum.Enum):
    table = "table"
    json = "json"


# spamtune.evaluate.EVAL_SPLITS, spelled out so that --help does not import torch.
SPLITS = ("test", "validation", "train", "all")


def _number(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2%}" if percent else f"{value:.4f}"


def _columns(result: dict) -> list[tuple[str, dict]]:
    """(heading, report) for the model and, if present, the baseline."""
    columns = [("spamtune", result)]
    if "baseline" in result:
        columns.append(("TF-IDF+LR", result["baseline"]))
    return columns


def _where(result: dict) -> str:
    if "input" in result:
        return result["input"]
    return "all splits" if result["split"] == "all" else f"the {result['split']} split"


@contextlib.contextmanager
def _format_option_named():
    """The input reader's errors name prepare's ``--format``; here ``--format`` is the report's,
    and the input's is ``--input-format``."""
    try:
        yield
    except SpamtuneError as exc:
        if "--format " not in str(exc):
            raise
        raise type(exc)(str(exc).replace("--format ", "--input-format ")) from None


def _is_spam_filter(result: dict) -> bool:
    """Whether the report has the spam filter's figures: a two-class run's. A run of more
    classes has a ``threshold`` field too (null, or the one given) but none of them."""
    return "spam_confusion" in result


def render_tables(result: dict, console: Console) -> None:
    from rich.table import Table

    columns = _columns(result)
    console.print(common.one_line(f"{result['run']} on {_where(result)}: {result['n']} messages"))
    if "baseline" in result:
        console.print(f"TF-IDF+LR: {result['baseline']['model']} trained on the run's train split")

    overview = Table(title="Overall")
    overview.add_column("")
    for heading, _ in columns:
        overview.add_column(heading, justify="right")
    overview.add_row("accuracy", *(_number(r["accuracy"], percent=True) for _, r in columns))
    overview.add_row("ROC-AUC", *(_number(r["roc_auc"]) for _, r in columns))
    overview.add_row("cross-entropy", *(_number(r["loss"]) for _, r in columns))
    for name, part in result.get("by_split", {}).items():
        overview.add_row(
            f"accuracy on {name} ({part['n']})",
            *(_number(r["by_split"][name]["accuracy"], percent=True) for _, r in columns),
        )
    console.print(overview)
    if _is_spam_filter(result):
        console.print(operating_point_table(result))

    per_class = Table(title="Per class")
    for heading in ("class", "model", "precision", "recall", "F1", "support"):
        per_class.add_column(heading, justify="left" if heading in ("class", "model") else "right")
    for label in result["labels"]:
        for heading, r in columns:
            scores = r["per_class"][label]
            per_class.add_row(
                cell(label), heading, *(_number(scores[k], percent=True) for k in ("precision", "recall", "f1")), str(scores["support"])
            )
    console.print(per_class)

    for heading, r in columns:
        matrix = Table(title=f"Confusion matrix, {heading}")
        matrix.add_column("true \\ predicted")
        for label in r["labels"]:
            matrix.add_column(cell(label), justify="right")
        for label, row in zip(r["labels"], r["confusion_matrix"]):
            matrix.add_row(cell(label), *map(str, row))
        console.print(matrix)


def operating_point_table(result: dict):
    """The spam filter's figures: at the run's threshold, then threshold-free."""
    from rich.table import Table

    table = Table(title="Spam filter")
    table.add_column("")
    table.add_column("spamtune", justify="right")
    (ham_kept, ham_lost), (spam_missed, spam_caught) = result["spam_confusion"]
    rows = [
        ("threshold", f"{result['threshold']:.4g} ({result['threshold_rule']})"),
        ("temperature", f"{result['temperature']:.4g}"),
        ("false-positive rate (ham marked spam)", f"{_number(result['false_positive_rate'], percent=True)} ({ham_lost} of {ham_kept + ham_lost})"),
        ("spam recall (spam caught)", f"{_number(result['spam_recall'], percent=True)} ({spam_caught} of {spam_missed + spam_caught})"),
        ("spam precision", _number(result["spam_precision"], percent=True)),
        ("spam F1", _number(result["spam_f1"], percent=True)),
        ("ROC-AUC", _number(result["roc_auc"])),
        ("PR-AUC (average precision)", _number(result["pr_auc"])),
        ("ECE (15 bins)", _number(result["ece"], percent=True)),
    ]
    for name, value in rows:
        table.add_row(name, cell(value))
    return table


@common.examples(
    ("spamtune evaluate", "the newest finished run on its test split"),
    ("spamtune evaluate --run 20261125-101500-tiny-all --split all --format json | jq .accuracy", "a run by name"),
    ("spamtune evaluate --input mails.csv --threshold 0.9 --baseline", "your own labelled file, beside TF-IDF"),
)
def evaluate_command(
    run_argument: str | None = typer.Argument(None, metavar="RUN", hidden=True, show_default=False),
    run: str | None = common.run_option(),
    split: str | None = common.choice_option(
        None, "--split", SPLITS, "Which prepared split to score; all: the three together, and each.", show_default="test"
    ),
    input_file: Optional[list[str]] = typer.Option(
        None, "--input", "-i", metavar="FILE|LABEL=PATH",
        help="A labelled file instead of a split: CSV/TSV with label,text columns, JSONL, or the SMS collection; "
        "or mail as LABEL=PATH (repeatable: a Maildir, an mbox, a folder of message files or a .eml).",
    ),
    input_format: Optional[Literal["tsv", "csv", "jsonl"]] = typer.Option(
        None, "--input-format", help="Format of --input (default: from its extension; give it for stdin, -, or a pipe)."
    ),
    long: Optional[LongMode] = long_option("chunks for mail, head for files and splits"),
    output_format: Optional[ReportFormat] = typer.Option(
        None, "--format", help="table (on stderr) or json (on stdout).", show_default="table"
    ),
    as_json: bool = common.json_option("json"),
    threshold: float | None = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Label a message spam when its spam probability is at least this (as predict). " + common.THRESHOLD_SCOPE,
        show_default="the run's calibrated threshold, else 0.5",
    ),
    precision: str | None = common.choice_option(
        None, "--precision", common.PRECISIONS, "Compute precision; by default the run's own, so the test accuracy is its summary's.",
        show_default="the run's",
    ),
    force: bool = typer.Option(
        False, "--force", help="Score even when the prepared splits differ from those the run was trained with (warns loudly)."
    ),
    baseline: bool = typer.Option(False, "--baseline", help="Also train TF-IDF + logistic regression on the train split."),
    batch_size: int = typer.Option(64, "--batch-size", help="Most messages per batch (see predict --batch-size)."),
    device: str = common.device_option(),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", metavar="DIR", show_default=False,
        help="Data root: where RUN names are looked up, and the splits read. Default for the splits: the run's own data root.",
    ),
    plots: Path | None = typer.Option(
        None, "--plots", metavar="DIR", help="Folder for roc.svg, pr.svg and calibration.svg (default: the run folder).", file_okay=False
    ),
    no_plots: bool = typer.Option(False, "--no-plots", help="Draw no plots."),
    devices: int | None = typer.Option(
        None, "--devices", min=1, help="Score with N processes on this machine (one per GPU; torchrun's launcher)."
    ),
) -> None:
    """Score a fine-tuned run on a split or a labelled file at the run's calibrated threshold.

    The spam filter's figures (false-positive rate, spam recall, ROC-AUC, PR-AUC, ECE), then accuracy, per-class precision, recall and F1, and the confusion matrix. Under torchrun each rank scores a share of the messages and rank 0 reports.
    """
    import sys

    from spamtune import distributed, paths
    from spamtune.evaluate import evaluate_run

    output_format = common.chosen_format(output_format, as_json, ReportFormat.json, ReportFormat.table)
    if run_argument is not None and run is not None:
        raise SpamtuneUsageError("name the run once: with --run")
    if split is not None and input_file:
        raise SpamtuneUsageError("give either --split or --input, not both")
    if input_format is not None:
        from spamtune.labelled_texts import mail_inputs

        if not input_file or mail_inputs(input_file):
            raise SpamtuneUsageError("--input-format applies to a labelled-text --input FILE (or -), not to a split or mail sources")
    if run_argument is not None:
        run = run_argument
    common.require_stdout()  # the report is the result: refused before the scoring, not lost after it
    if distributed.will_launch(devices, device):  # a missing run or input: one line here rather than one per rank
        paths.resolve_run(run, paths.data_root(data_dir))
        from spamtune.labelled_texts import mail_inputs, resolve_input

        if input_file and not mail_inputs(input_file):
            for each in input_file:
                resolve_input(paths.data_root(data_dir), each)
    if distributed.maybe_launch(devices, sys.argv[1:], device):
        return
    world = distributed.init_from_env(device)
    console = stderr_console()
    try:
        with _working(console, "scoring") if world.is_main else contextlib.nullcontext(), _format_option_named():
            result = evaluate_run(
                run,
                split=split or "test",
                input_file=input_file or None,
                input_format=input_format,
                data_dir=data_dir,
                device=device,
                batch_size=batch_size,
                baseline=baseline,
                threshold=threshold,
                precision=precision,
                force=force,
                long=long,
                write_plots=not no_plots and world.is_main,  # rank 0 alone writes files
                plots_dir=plots,
            )
    finally:
        distributed.shutdown()
    if not world.is_main:
        return
    common.unfinished_run_note(Path(result["run"]))
    for warning in result["warnings"]:
        common.warn(warning)
    if output_format is ReportFormat.json:
        typer.echo(common.json_line(result))
        return
    render_tables(result, console)
    line = f"accuracy {result['accuracy']:.2%} on {common.one_line(_where(result))} ({result['n']} messages)"
    if "baseline" in result:
        line += f"; baseline {result['baseline']['accuracy']:.2%}"
    if _is_spam_filter(result):
        line += (
            f"; at threshold {result['threshold']:.4g}: {_number(result['false_positive_rate'], percent=True)} of ham "
            f"marked spam, {_number(result['spam_recall'], percent=True)} of spam caught"
        )
    typer.echo(line)


def _working(console: Console, what: str):
    """A spinner on a terminal while the run loads and scores (silent elsewhere and under --quiet)."""
    import contextlib

    if not console.is_terminal or common.is_quiet():
        return contextlib.nullcontext()
    return console.status(what + "...")


def register(app: typer.Typer) -> None:
    common.add_command(app, "evaluate", evaluate_command)
