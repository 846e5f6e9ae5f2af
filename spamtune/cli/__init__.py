"""The ``spamtune`` command: a thin Typer layer over the library.

Each subcommand lives in its own module and only parses options, calls the core and renders
what comes back. Errors the user can fix are ``SpamtuneError``s and print as one
``Error: ...`` line on stderr (exit 1; 2 for usage errors); a traceback appears only with
``SPAMTUNE_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer
from typer.core import TyperGroup

try:  # Typer >= 0.20 vendors its own copy of Click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older Typer uses Click itself
    from click import exceptions as click_exceptions

from spamtune import __version__
from spamtune.errors import SpamtuneError
from spamtune.threads import prefer_passive_waiting


class SpamtuneGroup(TyperGroup):
    """Routes every failure to one line on stderr and a meaningful exit code."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Exit as exc:
            code = exc.exit_code
        except click_exceptions.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            code = _fail(f"{exc.format_message()}{hint}", 2)
        except typer.Abort:
            code = _fail("aborted", 130)
        except KeyboardInterrupt:
            code = _fail("interrupted", 130)
        except SpamtuneError as exc:
            code = _fail(str(exc), exc.exit_code)
        except Exception as exc:  # a bug: still one line unless debugging
            code = _fail(f"unexpected {type(exc).__name__}: {exc} (set SPAMTUNE_DEBUG=1 for a traceback)", 1)
        else:
            code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx):
        # Caught here because Typer's main would turn a broken pipe into exit status 1.
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise typer.Exit(_quiet_broken_pipe()) from None


def _fail(message: str, code: int) -> int:
    if os.environ.get("SPAMTUNE_DEBUG") == "1" and sys.exc_info()[0] is not None:
        traceback.print_exc()
    try:
        print(f"Error: {message}", file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        pass
    return code


def _quiet_broken_pipe() -> int:
    """The reader went away (``| head``): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


app = typer.Typer(
    cls=SpamtuneGroup,
    name="spamtune",
    help="Fine-tune GPT-2 into a spam classifier (chapter 6 of Build a Large Language Model "
    "(From Scratch)) and classify text in shell pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spamtune {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Fine-tune GPT-2 into a spam classifier and classify text in shell pipelines."""


# Subcommands, in the order a user runs them. Each module defines ``register(app)`` and keeps
# heavy imports (torch, pandas) inside its command function so `--help` stays instant.
COMMANDS = ("download", "prepare", "finetune", "evaluate", "predict")


def _register_commands() -> None:
    import importlib
    import importlib.util

    for name in COMMANDS:
        if importlib.util.find_spec(f"spamtune.cli.{name}") is not None:
            importlib.import_module(f"spamtune.cli.{name}").register(app)


_register_commands()


def main() -> None:
    """The ``spamtune`` command (console script and ``python -m spamtune``)."""
    # Before any command imports torch: OpenMP reads its wait policy once, at load.
    prefer_passive_waiting()
    app(prog_name="spamtune")
