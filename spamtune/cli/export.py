"""``spamtune export``: a run's classifier as one standalone safetensors file (LoRA merged)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    run: Path = typer.Argument(..., help="The run folder to export (full or compact)."),
    out: Path = typer.Argument(..., help="The file to write, e.g. classifier.safetensors."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Data root holding the run's base (default: the folder above the run's runs/)."
    ),
) -> None:
    """Write a run's full classifier, LoRA merged, to one safetensors file for other tools.

    The tensors have the names of a run's model.safetensors; the classifier config (labels,
    pooling, model shape) is in the file's metadata under "config". Prints the path on stdout.
    """
    from spamtune.compact import export_run

    typer.echo(export_run(run, out, data_dir))
