"""``spamtune sweep``: ``finetune``'s options, any of them a comma list; every combination runs.

The table (validation and test accuracy and loss, time; sorted by validation loss, the best
marked) goes to stderr with the progress; the path of ``sweep.json`` is the last line on stdout.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Optional

import typer

from spamtune.cli import common
from spamtune.cli.common import cell, field_help, flag, stderr_console, styled, with_dataclass_options
from spamtune.interrupts import interrupted_status, sigterm_as_interrupt
from spamtune.options import FinetuneOptions, as_typed


def _sweep_options() -> list[inspect.Parameter]:
    """Every option of ``finetune`` but the data root, as text: one value, or a comma list."""
    params = []
    for field in dataclasses.fields(FinetuneOptions):
        if field.name == "data_dir":
            continue
        option = typer.Option(None, flag(field.name), help=f"{field.metadata['help']} Default {as_typed(field.default)}; a comma list to sweep.")
        params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[str]))
    return params


class SweepReporter:
    """One line per run started and finished; each run's own progress as ``finetune`` shows it."""

    def __init__(self, console):
        from spamtune.cli.finetune import ProgressReporter

        self.console = console
        self.make_reporter = lambda: ProgressReporter(console)
        self.run_reporter = None

    def __call__(self, event) -> None:
        from spamtune.sweep import SweepRunFinished, SweepRunStarted

        if isinstance(event, SweepRunStarted):
            how = "resuming" if event.resumed else "running"
            self.console.print(styled((f"[{event.index}/{event.total}] {how} ", "bold"), common.one_line(event.name)))
            self.run_reporter = self.make_reporter()
        elif isinstance(event, SweepRunFinished):
            self.close()
            row = event.row
            if event.skipped:
                self.console.print(common.one_line(f"[{event.index}/{event.total}] {row['name']}: finished earlier, skipped"))
            elif row["status"] == "failed":  # said even under --quiet: the sweep goes on without it
                common.warn(f"[{event.index}/{event.total}] {row['name']} failed: {row['error']}")
        elif self.run_reporter is not None:
            self.run_reporter(event)

    def close(self) -> None:
        if self.run_reporter is not None:
            self.run_reporter.close()
            self.run_reporter = None


def _percent(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def _number(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(console, result) -> None:
    """One row per run, one column per swept option (what tells the runs apart; the run
    folders are named after the same values), ranked by validation loss, the best marked."""
    from rich.table import Table

    best = result.best
    swept = list(dict.fromkeys(name for row in result.rows for name in row["overrides"]))
    table = Table(title=cell(f"sweep {result.folder.name}: {len(result.rows)} runs, by validation loss"), title_justify="left")
    headings = [("", "left"), *((name.replace("_", "-"), "left") for name in swept)]
    headings += [("val acc", "right"), ("val loss", "right"), ("test acc", "right"), ("test loss", "right"), ("time", "right"), ("status", "left")]
    for heading, justify in headings:
        table.add_column(cell(heading), justify=justify)
    for row in result.ranked():
        mark = "best" if best is not None and row["name"] == best["name"] else ""
        seconds = row["wall_time_s"]
        table.add_row(
            cell(mark), *(cell(f"{row['overrides'].get(name, '')}") for name in swept),
            cell(_percent(row["validation_accuracy"])), cell(_number(row["validation_loss"])),
            cell(_percent(row["test_accuracy"])), cell(_number(row["test_loss"])),
            cell("-" if seconds is None else f"{seconds:.1f}s"), cell(row["status"] + (", earlier" if row.get("skipped") else "")),
        )  # fmt: skip
    common.print_table(console, table)
    if best is not None:
        console.print(common.one_line(f"best: {best['run']}"), markup=False, highlight=False)


@common.examples(
    ("spamtune sweep --lr 1e-5,5e-5,1e-4 --trainable last-block,last-2-blocks --epochs 5", "six runs on shared prefix caches"),
    ("spamtune sweep --model tiny --weights random --trainable lora,last-block --lr 5e-4,1e-3", "LoRA against the last block"),
)
@with_dataclass_options(_sweep_options())
def sweep_command(
    out: Optional[Path] = typer.Option(None, "--out", help="Sweep folder. Default: <data root>/sweeps/sweep-<hash of the sweep>, the same for the same sweep."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=field_help(FinetuneOptions, "data_dir")),
    **options,
) -> None:
    """Fine-tune every combination of the options given as comma lists, on shared prefix caches.

    A value holding a comma (a path) writes it \\, (--model 'cfg\\,v2.json'); any other backslash is itself.

    Runs go into one folder with sweep.json (runs ranked by validation loss); running the same sweep again skips finished runs and resumes an interrupted one. Every combination's options are checked before the first run; the exit code is 1 when no run finished.
    """
    from spamtune import paths
    from spamtune.sweep import combinations, parse_grid, run_sweep, split_values

    given = {name: value for name, value in options.items() if value is not None}
    listed = {name for name, value in given.items() if len(split_values(value)) > 1}
    fixed = {name: values[0] for name, values in parse_grid(FinetuneOptions, {k: v for k, v in given.items() if k not in listed}).items()}
    grid = parse_grid(FinetuneOptions, {k: v for k, v in given.items() if k in listed})
    base = FinetuneOptions(**fixed, data_dir=str(paths.data_root(data_dir)))
    common.choose_training_spin({**dataclasses.asdict(base), **combination} for combination in combinations(grid))

    from spamtune import events  # imports torch: the spin is chosen by now

    console = stderr_console()
    reporter = SweepReporter(console)
    try:
        with sigterm_as_interrupt():  # systemd, `timeout` or a scheduler's time limit: as Ctrl-C
            result = run_sweep(base, grid, out, on_event=reporter)
    except (events.TrainingInterrupted, KeyboardInterrupt) as exc:
        reporter.close()
        where = f" in {exc.run_dir}" if isinstance(exc, events.TrainingInterrupted) else ""
        console.print(common.one_line(f"interrupted{where}; finished runs are kept: run the same command again to go on"))
        raise typer.Exit(interrupted_status()) from None
    finally:
        reporter.close()
    render_table(console, result)
    from spamtune.errors import SpamtuneError
    from spamtune.sweep import SWEEP_FILE

    typer.echo(common.one_line(str(result.folder / SWEEP_FILE)))
    if result.best is None:  # nothing usable came out of it
        raise SpamtuneError(f"no run of the sweep finished: every one of the {len(result.rows)} failed (see {result.folder / SWEEP_FILE})")


def register(app: typer.Typer) -> None:
    common.add_command(app, "sweep", sweep_command)
