"""``spamtune bases ls|rm``: the base weights stored once under the data root, and the runs on them."""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional

import typer

from spamtune import paths
from spamtune.cli import common
from spamtune.cli.runs import human_size

bases_app = typer.Typer(
    help="Show and free the base weights that compact runs share (under <data root>/bases).",
    no_args_is_help=True,
    epilog=common.examples_epilog((
        ("spamtune bases ls", "each base, its size and the runs on it"),
        ("spamtune bases rm --unused", "free the bases no run uses"),
    )),
)

def register(app: typer.Typer) -> None:
    app.add_typer(bases_app, name="bases")


def _row(base) -> dict:
    """One base as the documented fields of ``ls --format json``."""
    return {
        "sha256": base.sha256,
        "bytes": base.nbytes,
        "origin": base.origin or None,
        "describe": base.describe(),
        "runs": [str(run) for run in base.users],
        "path": str(base.path),
    }


@common.command(bases_app, "ls")
@common.examples(
    ("spamtune bases ls", "one line per base: sha256, size, origin, runs on it"),
    ("spamtune bases ls --json | jq -r 'select(.runs == []) | .sha256'", "the unused ones"),
)
def ls(
    output_format: Optional[Literal["text", "json"]] = common.listing_format_option(),
    as_json: bool = common.json_option("json"),
    data_dir: Optional[Path] = common.data_dir_option(),
) -> None:
    """List the stored bases, oldest first: sha256, size, origin, and how many runs here use each.

    One line per base on stdout; the total on stderr.
    """
    from spamtune.base_catalog import folders_in_the_way, list_bases
    from spamtune.base_ref import how_to_clear

    output_format = common.chosen_format(output_format, as_json, "json", "text")
    root = paths.data_root(data_dir)
    stored = list_bases(root)
    for base in stored:
        row = _row(base)
        if output_format == "json":
            typer.echo(common.json_line(row))
            continue
        used = f"{len(base.users)} run{'' if len(base.users) == 1 else 's'}"
        typer.echo("\t".join(map(common.tsv_field, [base.sha256[:12], human_size(base.nbytes), row["describe"], used, row["path"]])))
    total = sum(base.nbytes for base in stored)
    common.note(f"{len(stored)} base(s), {human_size(total)} in {paths.bases_dir(root)}")
    folder = paths.bases_dir(root)
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():  # none stored, and none can be
        common.warn(f"{folder} is not a folder, so no base can be stored there: runs make theirs again at each use; move it away")
    for folder in folders_in_the_way(root):  # the runs on that base make it again at each use
        common.warn(f"not a base: {how_to_clear(folder)}")


@common.command(bases_app, "rm")
@common.examples(
    ("spamtune bases rm --unused", "every base no run under the data root uses"),
    ("spamtune bases rm be15d9735d61", "one base, by a prefix of its sha256"),
)
def rm(
    names: List[str] = typer.Argument(None, help="Bases to remove: unique prefixes of their sha256 (`spamtune bases ls`)."),
    unused: bool = typer.Option(False, "--unused", help="Remove every base that no run under the data root uses."),
    everything: bool = typer.Option(False, "--all", help="Remove every base."),
    data_dir: Optional[Path] = common.data_dir_option(),
) -> None:
    """Remove bases; a run on one rebuilds it from its origin (seed or GPT-2 download) when loaded. Prints each removed file.

    A file that cannot be removed is an error (exit 1) once the others are removed.
    """
    from spamtune.base_catalog import BasesNotRemoved, remove_bases

    common.one_choice({"base names": bool(names), "--unused": unused, "--all": everything}, "name the bases to remove, or give --unused or --all")
    failure = None
    try:
        removed = remove_bases(paths.data_root(data_dir), names or (), everything=everything, unused=unused)
    except BasesNotRemoved as exc:  # the files that did go are said first, as without it
        removed, failure = exc.removed, exc
    for base in removed:
        typer.echo(common.one_line(str(base.path)))
        if base.users:
            said = f"{len(base.users)} run(s) use {base.sha256[:12]} ({base.describe()}): they rebuild it from its origin when loaded"
            # A seed draws a random base again here; a download or a file must still be at hand.
            (common.note if (base.origin or {}).get("kind") == "random" else common.warn)(said)
    common.note(f"freed {human_size(sum(base.nbytes for base in removed))}")
    if failure is not None:
        raise failure
