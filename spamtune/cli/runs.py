"""``spamtune runs``: list the runs of a data root, show one, remove some.

A listing is a rich table on a terminal, tab-separated values with a header line in a pipe,
and a JSON array with ``--json``. Nothing here imports torch: it reads the runs' small files.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from spamtune import paths
from spamtune.cli import common
from spamtune.errors import SpamtuneUsageError

# Columns of the tab-separated listing (a pipe's default), in order; the names are RunInfo's.
TSV_FIELDS = ("name", "status", "model", "trainable", "validation_accuracy", "test_accuracy", "size_bytes", "modified")
STATUS_STYLE = {"finished": "green", "interrupted": "yellow", "failed": "red"}


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return "just now"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def tsv_value(value) -> str:
    return "" if value is None else common.tsv_field(str(value))


def _print_table(infos, console) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for heading, justify in (
        ("name", "left"), ("status", "left"), ("model", "left"), ("trainable", "left"),
        ("val acc", "right"), ("test acc", "right"), ("size", "right"), ("age", "right"),
    ):  # fmt: skip
        table.add_column(heading, justify=justify, no_wrap=heading == "name")
    for info in infos:
        table.add_row(
            common.cell(info.name),  # a folder name is never read as markup nor acted on by the terminal
            Text(info.status, style=STATUS_STYLE.get(info.status, "")),
            common.cell(info.model or "-"),
            common.cell(info.trainable or "-"),
            _percent(info.validation_accuracy),
            _percent(info.test_accuracy),
            human_size(info.size_bytes),
            human_age(info.age_seconds),
        )
    common.print_table(console, table)
    for info in infos:
        if info.resume_command:
            console.print(common.cell(f"{info.name} is interrupted; continue it with: {info.resume_command}"))


def _flatten(prefix: str, value, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out.append((prefix, json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value))


@common.examples(
    ("spamtune runs", "name, status, model, trainable, accuracy, size, age"),
    ("spamtune runs --json | jq -r '.[] | select(.status == \"failed\") | .name'", "scripts read JSON"),
    ("spamtune runs show 20261125-101500-gpt2-small-last-block", "one run's summary and hparams"),
)
def list_runs(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="A JSON array of runs (fields in the README)."),
    data_dir: Path | None = common.data_dir_option(),
) -> None:
    """List the runs of the data root (a table; --json for scripts); show one; remove some."""
    # Every run, the most recent first: a table on a terminal, TSV with a header in a pipe.
    ctx.obj = data_dir  # a subcommand's own --data-dir wins over this one
    if ctx.invoked_subcommand is not None:
        return
    from spamtune import run_catalog

    common.require_stdout()  # the listing is the result: with stdout closed it would vanish
    root = paths.data_root(data_dir)
    infos = run_catalog.list_runs(root)
    empty = f"no runs in {paths.runs_dir(root)} yet: `spamtune finetune` makes one; {paths.ELSEWHERE}"
    from spamtune.sweep_catalog import sweep_folders

    if sweep_folders(root):  # a sweep's runs live in its own folder, listed by `spamtune sweeps`
        empty = f"no runs in {paths.runs_dir(root)}; the runs of the sweeps here are listed by `spamtune sweeps`"
    emit_listing(infos, as_json, TSV_FIELDS, _print_table, empty)


def emit_listing(infos, as_json: bool, tsv_fields: tuple[str, ...], print_table, empty: str) -> bool:
    """A listing's ``infos`` (each with ``to_dict``) on stdout: a JSON array with ``--json``, a
    table (``print_table(infos, console)``) on a terminal, where an empty one is the note
    ``empty`` instead, else TSV with a header line. True when a table was printed."""
    if as_json:
        typer.echo(common.json_line([info.to_dict() for info in infos]))
    elif _stdout_is_terminal():
        if not infos:
            common.note(empty)
            return False
        from rich.console import Console

        print_table(infos, Console(highlight=False, soft_wrap=True))
        return True
    else:
        typer.echo("\t".join(tsv_fields))
        for info in infos:
            record = info.to_dict()
            typer.echo("\t".join(tsv_value(record[field]) for field in tsv_fields))
    return False


runs_app = common.group_with_default(list_runs)


@common.command(runs_app, "show")
@common.examples(
    ("spamtune runs show", "the newest finished run"),
    ("spamtune runs show 20261125-101500-tiny-all --json | jq .summary.test_accuracy", "one figure"),
)
def show_run(
    ctx: typer.Context,
    run: str | None = typer.Argument(
        None, metavar="RUN", help="A run name (under <data root>/runs/) or a run folder's path.",
        show_default="the newest finished run", autocompletion=common.complete_run_names,
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: the listing's fields, summary, hparams."),
    data_dir: Path | None = common.data_dir_option(),
) -> None:
    """One run: status, size and age, then its summary.json and hparams.json."""
    from spamtune import run_catalog

    run_dir = run_catalog.find_run(run, paths.data_root(data_dir or ctx.obj))
    record = {
        **run_catalog.describe_run(run_dir).to_dict(),
        "summary": run_catalog.read_summary(run_dir),
        "hparams": run_catalog.read_hparams(run_dir),
        "evaluations": len(run_catalog.read_evaluations(run_dir)),
        "base": run_catalog.base_of(run_dir),
    }
    if as_json:
        typer.echo(common.json_line(record))
        return
    sections = ("base", "summary", "hparams")
    lines: list[tuple[str, str]] = []
    for key, value in record.items():
        if key in sections:
            continue
        lines.append((key, "-" if value is None else str(value)))
    for section in sections:
        if record[section] is not None:
            _flatten(section, record[section], lines)
    # One line per key, whatever a key or value holds: the keys are those of the run's JSON
    # files too, which a hand-edited or planted run fills with anything.
    lines = [(common.one_line(key), common.one_line(value)) for key, value in lines]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        typer.echo(f"{key.ljust(width)}  {value}")


@common.command(runs_app, "rm")
@common.examples(
    ("spamtune runs rm 20261125-101500-tiny-all", "asks first, on a terminal"),
    ("spamtune runs --json | jq -r '.[] | select(.status == \"failed\") | .path' | xargs spamtune runs rm --yes",
     "in a script"),
)
def remove_runs(
    ctx: typer.Context,
    runs: list[str] = typer.Argument(
        ..., metavar="RUN...", help="Run names (under <data root>/runs/) or run folders' paths.",
        autocompletion=common.complete_run_names,
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking (needed when stdin is not a terminal)."),
    data_dir: Path | None = common.data_dir_option(),
) -> None:
    """Remove runs: asks on a terminal; scripts pass --yes. Removed folders' paths go to stdout."""
    from spamtune import run_catalog

    root = paths.data_root(data_dir or ctx.obj)
    if "" in runs:
        # Elsewhere an empty run means the newest one: here a script's empty variable
        # (`runs rm --yes "$RUN"`) removed the newest finished run.
        raise SpamtuneUsageError("an empty run name: name each run to remove (`spamtune runs` lists them)")
    found: dict[tuple[str, str], Path] = {}
    for run in runs:
        run_dir = run_catalog.find_run(run, root)
        # One run named twice, however spelt (a name and its path, runs/../runs/x): removed once,
        # where the second removal failed, after the first, as a run not found. The folder's own
        # name is not resolved: a link to a run is removed itself, a run of its own.
        found.setdefault((os.path.realpath(run_dir.parent), run_dir.name), run_dir)
    run_dirs = list(found.values())
    for run_dir in run_dirs:  # all checked before anything is removed
        run_catalog.check_removable(run_dir, root)
    if not yes:
        if not _stdin_is_terminal():
            raise SpamtuneUsageError("refusing to remove runs without --yes: stdin is not a terminal to ask on")
        infos = [run_catalog.describe_run(run_dir) for run_dir in run_dirs]
        for info in infos:
            print(f"  {common.one_line(info.path)}  ({info.status}, {human_size(info.size_bytes)})", file=sys.stderr)
        total = human_size(sum(info.size_bytes for info in infos))
        question = f"Remove {'this run' if len(infos) == 1 else f'these {len(infos)} runs'} ({total})?"
        if not typer.confirm(question, default=False, err=True):
            print("nothing removed", file=sys.stderr)
            raise typer.Exit(1)
    bases = {(run_catalog.base_of(run_dir) or {}).get("sha256") for run_dir in run_dirs} - {None}
    for run_dir in run_dirs:
        run_catalog.remove_run(run_dir)
        typer.echo(common.one_line(str(run_dir)))
    note_bases_left_unused(root, bases)


def note_bases_left_unused(root: Path, bases: set[str]) -> None:
    """Say which of ``bases`` (those the removed runs were on) no run here uses any more: they
    stay on the disk, 0.5 GB for gpt2-small, until `bases rm --unused` frees them."""
    from spamtune import run_catalog

    users = run_catalog.base_users(root)
    unused = [paths.base_file(root, sha) for sha in sorted(bases) if sha not in users]
    unused = [path for path in unused if path.is_file()]
    if unused:
        size = human_size(sum(path.stat().st_size for path in unused))
        common.note(f"{len(unused)} base(s) ({size}) are used by no run now; `spamtune bases rm --unused` frees them")


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
