"""``spamtune download``: the SMS Spam Collection and OpenAI's GPT-2 weights.

``spamtune download`` alone fetches both (the data and gpt2-small); ``download data`` and
``download model NAME`` fetch one, from the network or, with ``--from``, from a file carried
over. The data can also come from the copy bundled in the repository (``--bundled``, and
whenever UCI cannot give it). Notes and progress bars go to stderr; the written paths are the
last lines on stdout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from spamtune import paths
from spamtune.cli import common
from spamtune.errors import SpamtuneUsageError

if TYPE_CHECKING:  # rich is imported when a command runs, not when the CLI starts
    from rich.console import Console

DEFAULT_MODEL = "gpt2-small"
MODEL_NAMES_HELP = "gpt2-small, gpt2-medium, gpt2-large or gpt2-xl (aliases: gpt2, 124M, 355M, 774M, 1558M)"


_data_dir_option = common.data_dir_option
_stderr = common.stderr_console


def _check_model_name(name: str) -> str:
    """An unknown size is a usage error (exit 2), caught while parsing."""
    from spamtune.download import pretrained_name
    from spamtune.errors import SpamtuneError

    try:
        return pretrained_name(name)
    except SpamtuneError as exc:
        raise typer.BadParameter(str(exc)) from None


@contextlib.contextmanager
def _byte_progress(console: Console, description: str) -> Iterator:
    """A download bar on stderr when it is a terminal; ``None`` (no bar) otherwise."""
    if not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def fetch_data_file(root: Path, urls: list[str], from_file: Path | None, bundled: bool, console: Console) -> Path:
    """Put the verified data file in place and say, in one line, where it came from."""
    from spamtune.download import (
        BUNDLED_SMS_FILE,
        SMS_URLS,
        DataSource,
        data_urls,
        fetch_data,
        import_data,
        use_bundled_data,
    )

    from spamtune.interrupts import sigterm_as_interrupt

    def notify(message: str) -> None:
        console.print(common.one_line(message), markup=False)  # it may name the data root or --from's file

    # SIGTERM (`timeout`, a scheduler) as Ctrl-C: the temporary download is removed, where ending
    # at once would leave it beside the data under a random name, never resumed nor cleaned.
    with sigterm_as_interrupt():
        if from_file is not None:
            result = import_data(root, from_file, notify=notify)
        elif bundled:
            result = use_bundled_data(root, notify=notify)
        else:
            source = DataSource(urls=data_urls(urls))
            # Only the default source falls back to the bundled copy: a mirror the user named
            # failing is worth an error, not a silent substitute.
            fallback = BUNDLED_SMS_FILE if source.urls == SMS_URLS else None
            with _byte_progress(console, "SMS Spam Collection") as on_progress:
                result = fetch_data(root, source, fallback=fallback, on_progress=on_progress, notify=notify)
    if result.status == "bundled" and result.fallback_reason:
        line = (
            f"SMS Spam Collection: the download failed ({result.fallback_reason}), "
            f"so the bundled copy {result.source} was used"
        )
    elif result.status == "bundled":
        line = f"SMS Spam Collection: the bundled copy {result.source} was used"
    elif result.status != "present":
        line = f"SMS Spam Collection {result.status} from {result.source}"
    else:
        return result.path  # the note above already said it was there
    console.print(common.one_line(line + "; sha256 verified"), markup=False)
    return result.path


def fetch_model_file(root: Path, name: str, from_file: Path | None, endpoint: str | None, console: Console) -> Path:
    from spamtune.download import download_model, import_model, pretrained_name
    from spamtune.interrupts import sigterm_as_interrupt

    name = pretrained_name(name)
    # SIGTERM as Ctrl-C, as for the data: the hub client's partial file, under a name of its
    # own, is removed rather than left in its cache.
    with sigterm_as_interrupt():
        if from_file is not None:
            result = import_model(root, name, from_file)
            console.print(common.one_line(f"{from_file} imported: shapes match {result.path.parent.name}"), markup=False)
            return result.path
        common.configure_hf_logging()
        result = download_model(
            name,
            endpoint=endpoint,
            progress_bars=console.is_terminal,
            notify=lambda message: console.print(common.one_line(message), markup=False),
        )
    done = "was already in the Hugging Face cache" if result.status == "present" else "downloaded"
    console.print(f"{name} {done}; sha256 and shapes verified", markup=False)
    return result.path


def _print_path(path: Path) -> None:
    """A written file's path on stdout, one line a terminal shows as it is (a data root named
    with an escape sequence, a line break or bytes that are no UTF-8)."""
    typer.echo(common.one_line(str(path)))


@common.examples(
    ("spamtune download", "the SMS data and gpt2-small"),
    ("spamtune download data --from smsspamcollection.zip", "no network: import a copy"),
    ("spamtune download model gpt2-medium", "another size, into the Hugging Face cache"),
)
def download_all(ctx: typer.Context, data_dir: Path | None = _data_dir_option()) -> None:
    """Download the SMS Spam Collection and GPT-2 weights (both, with no subcommand)."""
    ctx.obj = data_dir  # a subcommand's own --data-dir wins over this one
    if ctx.invoked_subcommand is not None:
        return
    root, console = paths.data_root(data_dir), _stderr()
    data_path = fetch_data_file(root, [], None, False, console)
    model_path = fetch_model_file(root, DEFAULT_MODEL, None, None, console)
    _print_path(data_path)
    _print_path(model_path)


download_app = common.group_with_default(download_all)


@common.command(download_app, "data")
@common.examples(
    ("spamtune download data", "from UCI, sha256-checked"),
    ("spamtune download data --url https://mirror.example/sms.zip", "from a mirror"),
    ("spamtune download data --from SMSSpamCollection", "import a file carried over"),
)
def download_data(
    ctx: typer.Context,
    url: list[str] = typer.Option(
        [],
        "--url",
        metavar="URL",
        help="Download from this URL instead (repeat for mirrors, tried in order). "
        "Default: $SPAMTUNE_DATA_URLS (comma-separated), else UCI.",
        show_default=False,
    ),
    from_file: Path | None = typer.Option(
        None, "--from", metavar="PATH", help="Import a local zip or SMSSpamCollection file instead of downloading."
    ),
    bundled: bool = typer.Option(
        False,
        "--bundled",
        help="Use the copy shipped in the repository's data/ folder, without trying the network. "
        "Without it, the bundled copy is used when UCI (the default source) cannot be reached.",
    ),
    data_dir: Path | None = _data_dir_option(),
) -> None:
    """The SMS Spam Collection (UCI), sha256-checked, into <data root>/sms_spam_collection/."""
    sources = (("--url", bool(url)), ("--from", from_file is not None), ("--bundled", bundled))
    chosen = [flag for flag, given in sources if given]
    if len(chosen) > 1:
        raise SpamtuneUsageError(f"{', '.join(chosen[:-1])} and {chosen[-1]} exclude each other")
    root = paths.data_root(data_dir or ctx.obj)
    _print_path(fetch_data_file(root, url, from_file, bundled, _stderr()))


@common.command(download_app, "model")
@common.examples(
    ("spamtune download model", "gpt2-small (124M), the book's"),
    ("spamtune download model 355M", "gpt2-medium, by its size"),
    ("spamtune download model gpt2-small --from model.safetensors", "import a file carried over"),
)
def download_model(
    ctx: typer.Context,
    name: str = typer.Argument(DEFAULT_MODEL, metavar="NAME", help=MODEL_NAMES_HELP, callback=_check_model_name),
    from_file: Path | None = typer.Option(
        None,
        "--from",
        metavar="FILE",
        help="Import a local model.safetensors into <data root>/models/NAME/ instead of downloading.",
    ),
    endpoint: str | None = typer.Option(
        None, "--endpoint", envvar="HF_ENDPOINT", metavar="URL", help="Hugging Face hub or mirror to use."
    ),
    data_dir: Path | None = _data_dir_option(),
) -> None:
    """GPT-2 weights (model.safetensors) from the Hugging Face hub into its cache, checked."""
    root = paths.data_root(data_dir or ctx.obj)
    _print_path(fetch_model_file(root, name, from_file, endpoint, _stderr()))


def register(app: typer.Typer) -> None:
    app.add_typer(download_app, name="download")
