"""``spamtune sweeps``: list the sweeps of a data root, show one's ranked runs again, remove some.

A listing is a rich table on a terminal, tab-separated values with a header line in a pipe,
and a JSON array with ``--json``, as ``spamtune runs`` gives. Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from spamtune import paths
from spamtune.cli import common
from spamtune.cli.runs import emit_listing, human_size, tsv_value
from spamtune.errors import SpamtuneUsageError

# Columns of the tab-separated listing (a pipe's default), in order; the names are SweepInfo's.
TSV_FIELDS = ("name", "status", "runs", "done", "failed", "best", "best_validation_loss", "best_test_accuracy", "size_bytes", "modified")
STATUS_STYLE = {"finished": "green", "interrupted": "yellow", "running": "cyan", "damaged": "red"}
# The fields of one run in ``sweeps show``'s TSV (a row of sweep.json, its options flattened).
SHOW_FIELDS = ("name", "status", "validation_accuracy", "validation_loss", "test_accuracy", "test_loss", "wall_time_s", "run", "error")

SWEEP_ARGUMENT_HELP = "A sweep's name (under <data root>/sweeps/, or a unique start of it), or a sweep folder's path."


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _print_listing(infos, console) -> None:
    """The sweeps as a table that fits a terminal's 80 columns with a default sweep's name and a
    best run of three options: sizes and ages are in the TSV and JSON, the total below."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for heading, justify in (
        ("name", "left"), ("status", "left"), ("runs", "right"), ("best run", "left"), ("val loss", "right"), ("test acc", "right"),
    ):  # fmt: skip
        table.add_column(heading, justify=justify, no_wrap=heading in ("name", "status", "best run"))
    for info in infos:
        table.add_row(
            common.cell(info.name),
            Text(info.status, style=STATUS_STYLE.get(info.status, "")),
            f"{info.done}/{info.runs}" + (f", {info.failed} failed" if info.failed else ""),
            common.cell(info.best or "-"),
            "-" if info.best_validation_loss is None else f"{info.best_validation_loss:.3f}",
            "-" if info.best_test_accuracy is None else f"{info.best_test_accuracy:.2%}",
        )
    common.print_table(console, table)


@common.examples(
    ("spamtune sweeps", "name, status, runs finished, best run and its figures"),
    ("spamtune sweeps --json | jq -r '.[0].best_path'", "the newest sweep's best run, for predict --run"),
    ("spamtune sweeps show", "the newest sweep's runs, ranked by validation loss"),
)
def list_sweeps(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="A JSON array of sweeps (fields in the README)."),
    data_dir: Path | None = common.data_dir_option(),
) -> None:
    """List the sweeps of the data root (a table; --json for scripts); show one's runs; remove some."""
    # The most recently active first: a table on a terminal, TSV with a header in a pipe.
    ctx.obj = data_dir  # a subcommand's own --data-dir wins over this one
    if ctx.invoked_subcommand is not None:
        return
    from spamtune import sweep_catalog

    common.require_stdout()  # the listing is the result: with stdout closed it would vanish
    root = paths.data_root(data_dir)
    infos = sweep_catalog.list_sweeps(root)
    empty = f"no sweeps in {sweep_catalog.sweeps_dir(root)} yet: `spamtune sweep` makes one; {paths.ELSEWHERE}"
    if emit_listing(infos, as_json, TSV_FIELDS, _print_listing, empty):
        common.note(f"{len(infos)} sweep(s), {human_size(sum(info.size_bytes for info in infos))} in {sweep_catalog.sweeps_dir(root)}")


sweeps_app = common.group_with_default(list_sweeps)


@common.command(sweeps_app, "show")
@common.examples(
    ("spamtune sweeps show", "the newest sweep: its runs ranked by validation loss, the best marked"),
    ("spamtune sweeps show sweep-3f9a --json | jq -r '.runs[] | [.name, .test_accuracy] | @tsv'", "one figure per run"),
)
def show_sweep(
    ctx: typer.Context,
    sweep: str | None = typer.Argument(
        None, metavar="SWEEP", help=SWEEP_ARGUMENT_HELP, show_default="the newest sweep", autocompletion=common.complete_sweep_names
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: the listing's fields and the runs, ranked (fields in the README)."),
    data_dir: Path | None = common.data_dir_option(),
) -> None:
    """One sweep's runs ranked by validation loss, the best marked: the table the sweep ended with.

    A table on a terminal, TSV with a header (one line per run, a column per swept option) in a pipe.
    """
    from spamtune import sweep_catalog

    common.require_stdout()
    folder = sweep_catalog.find_sweep(sweep, paths.data_root(data_dir or ctx.obj))
    result = sweep_catalog.read_sweep(folder)
    info = sweep_catalog.sweep_info(folder, result)  # sweep.json read once
    if as_json:
        typer.echo(common.json_line({**info.to_dict(), "runs": result.ranked()}))
        return
    if sys.stdout.isatty():
        from rich.console import Console

        from spamtune.cli.sweep import render_table

        render_table(Console(highlight=False, soft_wrap=True), result)
        return
    swept = info.swept
    # The swept options' names come from sweep.json too: a hand-edited one could hold a tab or
    # a newline, which would split the header.
    typer.echo("\t".join(tsv_value(name) for name in ("best", *swept, *SHOW_FIELDS)))
    for row in result.ranked():
        mark = "best" if row["name"] == info.best else ""
        values = (mark, *(row["overrides"].get(name) for name in swept), *(row[field] for field in SHOW_FIELDS))
        typer.echo("\t".join(tsv_value(value) for value in values))


@common.command(sweeps_app, "rm")
@common.examples(
    ("spamtune sweeps rm sweep-3f9a", "asks first, on a terminal"),
    ("spamtune sweeps --json | jq -r '.[] | select(.done == 0) | .path' | xargs -r spamtune sweeps rm --yes", "in a script"),
)
def remove_sweeps(
    ctx: typer.Context,
    sweeps: list[str] = typer.Argument(..., metavar="SWEEP...", help=SWEEP_ARGUMENT_HELP, autocompletion=common.complete_sweep_names),
    yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking (needed when stdin is not a terminal)."),
    data_dir: Path | None = common.data_dir_option(),
) -> None:
    """Remove sweeps with their runs: asks on a terminal; scripts pass --yes. Removed folders' paths go to stdout."""
    from spamtune import sweep_catalog
    from spamtune.cli.runs import note_bases_left_unused
    from spamtune.run_catalog import base_of

    root = paths.data_root(data_dir or ctx.obj)
    if "" in sweeps:  # a script's empty variable: never the newest sweep
        raise SpamtuneUsageError("an empty sweep name: name each sweep to remove (`spamtune sweeps` lists them)")
    found: dict[str, Path] = {}
    for sweep in sweeps:
        folder = sweep_catalog.find_sweep(sweep, root)
        # One sweep named twice is removed once; a link to a sweep is removed alone, so it is
        # not the sweep it points to, which may be named beside it.
        key = os.path.join(os.path.realpath(folder.parent), folder.name) if folder.is_symlink() else os.path.realpath(folder)
        found.setdefault(key, folder)
    folders = list(found.values())
    for folder in folders:  # all checked before anything is removed
        sweep_catalog.check_removable(folder, root)
    if not yes:
        if not _stdin_is_terminal():
            raise SpamtuneUsageError("refusing to remove sweeps without --yes: stdin is not a terminal to ask on")
        freed = 0
        for folder in folders:
            if folder.is_symlink():  # what it points to stays: nothing of it is freed
                print(f"  {common.one_line(str(folder))}  (a symbolic link to {common.one_line(os.readlink(folder))}: the link alone is removed)", file=sys.stderr)
                continue
            info = sweep_catalog.describe_sweep(folder)
            freed += info.size_bytes
            print(f"  {common.one_line(info.path)}  ({info.status}, {info.runs} runs, {human_size(info.size_bytes)})", file=sys.stderr)
        question = f"Remove {'this sweep' if len(folders) == 1 else f'these {len(folders)} sweeps'} and their runs ({human_size(freed)})?"
        if not typer.confirm(question, default=False, err=True):
            print("nothing removed", file=sys.stderr)
            raise typer.Exit(1)
    bases = set()
    for folder in folders:
        if not folder.is_symlink():  # a link is removed alone: the runs it points to stay
            bases |= {(base_of(run_dir) or {}).get("sha256") for run_dir in folder.iterdir() if run_dir.is_dir()} - {None}
        sweep_catalog.remove_sweep(folder, root)
        typer.echo(common.one_line(str(folder)))
    note_bases_left_unused(root, bases)


def register(app: typer.Typer) -> None:
    app.add_typer(sweeps_app, name="sweeps")
