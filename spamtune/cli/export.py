"""``spamtune export``: a run's classifier as one standalone safetensors file (LoRA merged)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from spamtune.cli import common
from spamtune.interrupts import sigterm_as_interrupt


def register(app: typer.Typer) -> None:
    common.add_command(app, "export", export)


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


@common.examples(
    ("spamtune export 20261125-101500-tiny-lora classifier.safetensors", "one file, LoRA merged"),
    ("spamtune export \"$(spamtune runs --json | jq -r '.[0].path')\" latest.safetensors", "the newest run"),
    ("spamtune export 20261125-101500-tiny-lora - | ssh host 'cat > classifier.safetensors'", "into a pipe"),
)
def export(
    run: str = typer.Argument(..., help="The run to export (full or compact): a name under <data root>/runs, or a folder."),
    out: str = typer.Argument(..., help="The file to write, e.g. classifier.safetensors; - writes the file's bytes to stdout (a pipe or file, never a terminal)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT even if it is not a classifier spamtune exported (a symbolic link is replaced, not the file it points to)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root of the run and its base (default: $SPAMTUNE_HOME, else the user data folder)."),
) -> None:
    """Write a run's full classifier, LoRA merged, to one safetensors file for other tools.

    The tensors have the names of a run's model.safetensors; the classifier config (labels, pooling, model shape) is in the file's metadata under "config". Prints the path on stdout.

    OUT must name a file: a folder, or a name ending in /, is refused. An existing OUT is replaced only if it is an earlier export, else only with --force. With - as OUT the file itself goes to stdout instead of its path: it is written whole in the temporary folder ($TMPDIR) first, then copied, so a failed export writes nothing there (./- names a file called -).
    """
    from spamtune import paths
    from spamtune.export import export_run, export_to_stream
    from spamtune.errors import SpamtuneUsageError

    if out == "-":
        common.require_stdout()  # the file itself goes there
    if out == "-" and _stdout_is_terminal():
        raise SpamtuneUsageError("will not write a safetensors file to a terminal; pipe or redirect stdout (spamtune export RUN - > classifier.safetensors), or name the file")
    root = paths.data_root(data_dir)
    run_dir = paths.resolve_run(run, root)
    common.unfinished_run_note(run_dir)
    # `timeout`, systemd or `kill` stop it as Ctrl-C does: a killed write would leave its
    # temporary file, as large as the export, hidden beside OUT.
    with sigterm_as_interrupt():
        if out == "-":
            export_to_stream(run_dir, sys.stdout.buffer, root if data_dir else None)
            return
        written = export_run(run_dir, out, root if data_dir else None, force=force)
    typer.echo(common.one_line(str(written)))
