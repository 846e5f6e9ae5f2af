"""``spamtune export``: a run's classifier as one standalone safetensors file (LoRA merged)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from spamtune.cli import common


def register(app: typer.Typer) -> None:
    common.add_command(app, "export", export)


@common.examples(
    ("spamtune export 20261125-101500-tiny-lora classifier.safetensors", "one file, LoRA merged"),
    ("spamtune export \"$(spamtune runs --json | jq -r '.[0].path')\" latest.safetensors", "the newest run"),
)
def export(
    run: str = typer.Argument(..., help="The run to export (full or compact): a name under <data root>/runs, or a folder."),
    out: Path = typer.Argument(..., help="The file to write, e.g. classifier.safetensors."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root of the run and its base (default: $SPAMTUNE_HOME, else the user data folder)."),
) -> None:
    """Write a run's full classifier, LoRA merged, to one safetensors file for other tools.

    The tensors have the names of a run's model.safetensors; the classifier config (labels, pooling, model shape) is in the file's metadata under "config". Prints the path on stdout.
    """
    from spamtune import paths
    from spamtune.compact import export_run

    root = paths.data_root(data_dir)
    typer.echo(export_run(paths.resolve_run(run, root), out, root if data_dir else None))
