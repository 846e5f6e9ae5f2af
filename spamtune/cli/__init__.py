"""The ``spamtune`` command: a thin Typer layer over the library.

Each subcommand lives in its own module and only parses options, calls the core and renders
what comes back. Errors the user can fix are ``SpamtuneError``s and print as one
``Error: ...`` line on stderr (exit 1; 2 for usage errors); a traceback appears only with
``SPAMTUNE_DEBUG=1``.
"""

from __future__ import annotations

import errno
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
from spamtune.cli import common
from spamtune.errors import OptionError, RanksInterrupted, SpamtuneError
from spamtune.interrupts import forget_stop, interrupted_status, speaks_for_the_ranks
from spamtune.allocator import keep_freed_memory
from spamtune.cli.process_end import end_process
from spamtune.threads import BRIEF_SPIN_COUNT, prefer_passive_waiting


def _flags_show_no_value() -> None:
    """Typer's rich help prints a ``<bool>`` type beside a flag as if it took a value, which
    invited ``predict --fail-on-spam true "hi"`` (a flag takes none: "true" was a message).
    Flags get an empty type column instead."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - other Typer layouts print no type column
        return
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "flags_show_no_value", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag or self.count else shown(self, ctx)

    display_type_rich.flags_show_no_value = True
    TyperOption.display_type_rich = display_type_rich


_flags_show_no_value()


class SpamtuneGroup(TyperGroup):
    """Routes every failure to one line on stderr and a meaningful exit code."""

    def main(self, args=None, *rest, standalone_mode: bool = True, **kwargs):
        common.reset(sys.argv[1:] if args is None else list(args))
        forget_stop()
        try:
            with common.library_warnings_as_lines():
                rv = super().main(args, *rest, standalone_mode=False, **kwargs)
        except typer.Exit as exc:
            code = exc.exit_code
        except click_exceptions.NoArgsIsHelpError as exc:
            # `spamtune` alone: the help (rich prints it while the error is built), no "Error:" line.
            if exc.format_message().strip():
                print(exc.format_message())
            code = 2
        except click_exceptions.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            code = _fail(f"{_plain(exc.format_message())}{hint}", 2)
        except typer.Abort:
            code = _fail("aborted", 130)
        except KeyboardInterrupt:
            code = _interrupted()
        except RanksInterrupted as exc:
            code = exc.exit_code if exc.said else _fail("interrupted", exc.exit_code)
        except OptionError as exc:  # the core names the option; here it is the flag
            code = _fail(exc.naming(common.flag(exc.option)), _status(exc.exit_code))
        except SpamtuneError as exc:
            code = _fail(str(exc), _status(exc.exit_code))
        except Exception as exc:  # a bug: still one line unless debugging
            message = f"unexpected {type(exc).__name__}: {exc} (set SPAMTUNE_DEBUG=1 for a traceback)"
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # The core's own writes fail as SpamtuneErrors naming their file; a full disk
                # left bare is the command's output, stdout redirected to a file.
                message = f"cannot write the output: {exc.strerror}"
            elif isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG and exc.filename:
                # A path the user gave (--out, a data root, an export's file) with a name past
                # what the file system takes: theirs to shorten, not a bug of spamtune's.
                message = f"a name in this path is longer than the file system allows: {exc.filename}"
            code = _fail(message, common.error_exit_code())
        else:
            code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code

    def make_context(self, *args, **kwargs):
        # Parsing the command line imports pydantic (Typer reads options with it) on first use,
        # ~0.1 s: a Ctrl-C there reaches Typer's main, which returns exit status 130 with
        # nothing said, indistinguishable from a command that said its own line and exited 130.
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            raise typer.Exit(_interrupted()) from None

    def invoke(self, ctx):
        # Caught here because Typer's main would turn a broken pipe into exit status 1, and
        # Ctrl-C into exit status 130 with nothing said.
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            _quiet_broken_pipe()
            # 0, as Unix tools end, unless the command still owes a status (predict --fail-on-spam).
            raise typer.Exit(getattr(exc, "exit_code", 0)) from None
        except KeyboardInterrupt:
            raise typer.Exit(_interrupted()) from None


def _status(code: int) -> int:
    """A runtime error's exit status: 1, unless the command uses 1 for an answer (see common)."""
    return common.error_exit_code() if code == 1 else code


def _plain(message: str) -> str:
    """A value error as the user wrote it: Typer's validation layer prefixes "Value error, "."""
    return message.replace("Value error, ", "")


def _fail(message: str, code: int) -> int:
    if os.environ.get("SPAMTUNE_DEBUG") == "1" and sys.exc_info()[0] is not None:
        traceback.print_exc()
    try:
        print(f"Error: {common.one_line(message)}", file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        pass
    return code


def _interrupted() -> int:
    # Every rank of a job gets the signal: one line for the job, not one per rank.
    return _fail("interrupted", interrupted_status()) if speaks_for_the_ranks() else interrupted_status()


def _quiet_broken_pipe() -> None:
    """The reader went away (``| head``): stop quietly, as Unix tools do."""
    common.discard_stdout()


app = typer.Typer(
    cls=SpamtuneGroup,
    name="spamtune",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=common.examples_epilog((
        ("spamtune download && spamtune prepare && spamtune finetune", "the book's recipe, end to end"),
        ('spamtune predict "WINNER!! Claim your prize now"', "classify with the newest finished run"),
        ("spamtune runs", "every run: status, model, accuracy, size, age"),
    )),
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spamtune {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Fine-tune GPT-2 into a spam classifier and classify text in shell pipelines.

    Downloads, prepared splits and runs/ live in one data root: --data-dir, else $SPAMTUNE_HOME, else the user data folder.

    Exit status: 0 success, 1 runtime error, 2 usage error.
    """


# Subcommands, in the order a user runs them. Each module defines ``register(app)`` and keeps
# heavy imports (torch, pandas) inside its command function so `--help` stays instant.
COMMANDS = ("download", "prepare", "finetune", "sweep", "calibrate", "evaluate", "predict", "filter", "serve", "runs", "sweeps", "export", "cache", "bases")


def _register_commands() -> None:
    import importlib
    import importlib.util

    for name in COMMANDS:
        if importlib.util.find_spec(f"spamtune.cli.{name}") is not None:
            importlib.import_module(f"spamtune.cli.{name}").register(app)
    _add_verbosity_options(app)


def _add_verbosity_options(typer_app: typer.Typer) -> None:
    """--quiet and --verbose on the root, every group and every subcommand alike."""
    if typer_app.registered_callback is not None and typer_app.registered_callback.callback is not None:
        info = typer_app.registered_callback
        info.callback = common.with_verbosity_options(info.callback)
    for command in typer_app.registered_commands:
        command.callback = common.with_verbosity_options(command.callback)
    for group in typer_app.registered_groups:
        _add_verbosity_options(group.typer_instance)


_register_commands()


def main() -> None:
    """The ``spamtune`` command (console script and ``python -m spamtune``)."""
    # Before any command imports torch: OpenMP reads its wait policy once, at load. finetune and
    # sweep choose theirs once their options are read (``common.choose_training_spin``).
    training = sys.argv[1:2] in (["finetune"], ["sweep"])
    if not training:
        prefer_passive_waiting(spin_count=BRIEF_SPIN_COUNT if sys.argv[1:2] == ["serve"] else None)
    if training:
        keep_freed_memory()  # a training step frees and takes the same memory every time
    try:
        app(prog_name="spamtune")
    except SystemExit as exc:
        end_process(exc.code)
