"""``spamtune cache ls|rm``: the frozen-prefix caches kept under the data root, and their sizes."""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional

import typer

from spamtune import paths
from spamtune.cli import common
from spamtune.cli.runs import human_size

cache_app = typer.Typer(
    help="Show and free the frozen-prefix caches that later runs reuse (under <data root>/cache).",
    no_args_is_help=True,
    epilog=common.examples_epilog((
        ("spamtune cache ls", "what is kept, with sizes"),
        ("spamtune cache rm --all", "free them all: later runs build what they need again"),
    )),
)

DATA_DIR = typer.Option(None, "--data-dir", help="Data root (default: $SPAMTUNE_HOME, else ./data).")


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")


def _row(entry) -> dict:
    """One cache as the documented fields of ``ls --format json``."""
    from spamtune.cache_catalog import meta_field

    meta = entry.meta or {}
    key = meta_field(meta, "key", dict)
    return {
        "name": entry.name,
        "status": entry.status,
        "bytes": entry.nbytes,
        "blocks": meta_field(key, "blocks", int),
        "dtype": meta_field(key, "dtype", str),
        "precision": meta_field(key, "precision", str),
        "examples": meta_field(meta, "examples", int),
        "base_sha256": meta_field(key, "base_sha256", str),
        "tokens_sha256": meta_field(key, "tokens_sha256", str),
        "created": meta_field(meta, "created", str),
        "path": str(entry.path),
    }


@common.command(cache_app, "ls")
@common.examples(
    ("spamtune cache ls", "one line per cache: name, size, blocks, dtype, examples, base"),
    ("spamtune cache ls --json | jq -s 'map(.bytes) | add'", "bytes in all"),
)
def ls(
    output_format: Optional[Literal["text", "json"]] = common.listing_format_option(),
    as_json: bool = common.json_option("json"),
    data_dir: Optional[Path] = DATA_DIR,
) -> None:
    """List the caches, oldest first: name, size, frozen blocks, dtype, examples, base.

    One line per cache on stdout; the total on stderr.
    """
    from spamtune.cache_catalog import list_caches

    output_format = common.chosen_format(output_format, as_json, "json", "text")
    common.require_stdout()  # the listing is the result: with stdout closed it would vanish
    entries = list_caches(paths.data_root(data_dir))
    for entry in entries:
        row = _row(entry)
        if output_format == "json":
            typer.echo(common.json_line(row))
            continue
        base = (row["base_sha256"] or "-")[:12]
        fields = [row["name"], human_size(row["bytes"]), f"{row['blocks'] or '-'} blocks", row["dtype"] or "-",
                  row["precision"] or "-", f"{'-' if row['examples'] is None else row['examples']} examples", f"base {base}", row["status"], row["created"] or "-"]  # fmt: skip
        typer.echo("\t".join(common.tsv_field(str(f)) for f in fields))
    total = sum(e.nbytes for e in entries)
    common.note(f"{len(entries)} cache(s), {human_size(total)} in {paths.cache_dir(paths.data_root(data_dir))}")


@common.command(cache_app, "rm")
@common.examples(
    ("spamtune cache rm 3f9a1c", "one cache, by a prefix of its name"),
    ("spamtune cache rm --all", "every cache"),
    ("spamtune cache rm --stale", "the caches no run will read or finish: stale, damaged, abandoned"),
)
def rm(
    names: List[str] = typer.Argument(None, help="Caches to remove: their names from `spamtune cache ls`, or unique prefixes."),
    everything: bool = typer.Option(False, "--all", help="Remove every cache."),
    stale: bool = typer.Option(False, "--stale", help="Remove the caches no run will read or finish: those `spamtune cache ls` shows as stale, damaged or abandoned."),
    data_dir: Optional[Path] = DATA_DIR,
) -> None:
    """Remove caches; a later run rebuilds what it needs. Prints each removed folder on stdout.

    A folder that cannot be removed is an error (exit 1) once the others are removed.
    """
    from spamtune.cache_catalog import remove_caches

    common.one_choice({"cache names": bool(names), "--all": everything, "--stale": stale}, "name the caches to remove, or give --all or --stale")
    removal = remove_caches(paths.data_root(data_dir), names or (), everything=everything, stale=stale)
    for entry in removal.removed:
        typer.echo(common.one_line(str(entry.path)))
    common.note(f"freed {human_size(removal.freed)}")
    failure = removal.error()
    if failure is not None:
        raise failure
