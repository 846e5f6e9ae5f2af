"""What every subcommand shares: option spellings, value checks, verbosity, examples in help,
options built from the core's dataclasses, and a console that never reads user text as markup.

One concept has one option name in every command (``--run``, ``--input``, ``--data-dir``,
``--device``, ``--precision``), built by the factories below. Values are checked while the
command line is parsed, so a wrong one is a usage error (exit 2) before anything loads, and the
choices are listed in ``--help``. Nothing here imports torch, pandas or rich at start-up:
``--help`` stays instant.

Options: the dataclasses in ``spamtune.options`` hold every default and help text; a command
lists the fields it takes and ``with_dataclass_options`` adds them to its signature as Typer
options, so nothing is written twice (as litgpt builds its CLI from its dataclasses).

Rendering: paths, labels and messages may hold ``[`` and ``]`` (``runs/weird[/x]run``, a label
``[/x]``); rich would read them as markup, drop them or fail. ``stderr_console`` prints plain
text; what needs a style is built with ``styled``, and table cells go through ``cell``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import re
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from spamtune import paths
from spamtune.model_names import MODEL_NAMES
from spamtune.options import LONG_MODES, trains_final_block_alone
from spamtune.shell import is_control

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# --------------------------------------------------------------------------- verbosity

QUIET, NORMAL, VERBOSE = -1, 0, 1
_verbosity = NORMAL
# The exit status for runtime errors: 1, or 2 when the command uses 1 for an answer
# (``predict --fail-on-spam``: 0 no spam, 1 spam found, 2 an error, as grep does).
_error_exit_code = 1
# The command line as given, for checks that need to see how words were placed.
_argv: list[str] = []


def reset(argv: list[str]) -> None:
    """Start of a command: default verbosity and error status (the CLI may run many times in one process)."""
    global _verbosity, _error_exit_code, _argv
    _verbosity, _error_exit_code, _argv = NORMAL, 1, list(argv)


def is_quiet() -> bool:
    return _verbosity == QUIET


def is_verbose() -> bool:
    return _verbosity == VERBOSE


def command_line() -> list[str]:
    return _argv


def error_exit_code() -> int:
    return _error_exit_code


def use_error_exit_code(code: int) -> None:
    global _error_exit_code
    _error_exit_code = code


def _set_verbosity(level: int, flag: str):
    def callback(value: bool) -> None:
        global _verbosity
        if not value:
            return
        if _verbosity not in (NORMAL, level):
            raise typer.BadParameter("--quiet and --verbose exclude each other", param_hint=flag)
        _verbosity = level

    return callback


def quiet_option():
    return typer.Option(
        False, "--quiet", "-q", callback=_set_verbosity(QUIET, "--quiet"), expose_value=False, is_eager=True,
        help="Nothing on stderr but errors and warnings: no progress, notes or tables.",
    )


def verbose_option():
    return typer.Option(
        False, "--verbose", "-v", callback=_set_verbosity(VERBOSE, "--verbose"), expose_value=False, is_eager=True,
        help="More detail on stderr (which run and device, Hugging Face's retries and logs).",
    )


def with_verbosity_options(callback):
    """``callback`` with ``--quiet``/``--verbose`` added to its options, unless it has them.

    Applied by the CLI to every command and group callback, so each subcommand takes both, the
    same way, without repeating them in every signature. The options set the verbosity while the
    command line is parsed; the callback never sees them.
    """
    signature = inspect.signature(callback, eval_str=True)
    if {"quiet", "verbose"} & set(signature.parameters):
        return callback

    @functools.wraps(callback)
    def wrapper(*args, quiet=None, verbose=None, **kwargs):
        return callback(*args, **kwargs)

    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option(), annotation=bool)
        for name, option in (("quiet", quiet_option), ("verbose", verbose_option))
    ]
    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *added])
    wrapper.__annotations__ = {**getattr(callback, "__annotations__", {}), "quiet": bool, "verbose": bool}
    return wrapper


def stderr_console() -> Console:
    """Rich on stderr with markup and highlighting off (every string prints as it is), silent
    under ``--quiet``."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, markup=False, highlight=False, quiet=is_quiet())


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line of plain strings and ``(text, style)`` pairs, none of it read as markup."""
    from rich.text import Text

    return Text.assemble(*parts)


def print_table(console: Console, table) -> None:
    """A rich table on a terminal fits its width; in a file or pipe (where rich assumes 80
    columns) it is printed at its natural width, so no run name or value is cut to "…"."""
    if not console.is_terminal:
        table.width = console.measure(table, options=console.options.update(max_width=10_000)).maximum
    console.print(table, crop=console.is_terminal)


def cell(value: object) -> Text:
    """A table cell or heading shown as it is (rich tables read plain strings as markup), on one
    line: a control character in it (a run folder named with a line break or an escape
    sequence) is written as ``one_line`` writes it, not acted on by the terminal."""
    from rich.text import Text

    return Text(one_line(str(value)))


def one_line(message: str) -> str:
    """``message`` as one line that a terminal shows as it is: a line break or other control
    character in a value the user gave (a path with an escape sequence or a newline) is written
    as Python writes it in a string (``\\n``, ``\\x1b``), not acted on."""
    return message.translate(_ESCAPED)


# The lone surrogates: how Python reads the bytes of a file name that are no UTF-8 (``\xff`` is
# U+DCFF), which no UTF-8 output can hold: a terminal's stdout raises on one.
_SURROGATES = range(0xD800, 0xE000)
# Every character ``is_control`` names, and the lone surrogates, as Python writes it in a string.
_ESCAPED = {
    n: chr(n).encode("unicode_escape").decode("ascii")
    for n in (*(n for n in (*range(160), 0x2028, 0x2029) if is_control(chr(n))), *_SURROGATES)
}


# What ends a line for some reader of the output besides "\n": Python's str.splitlines (which
# also splits at \v, \f, \x1c-\x1e and U+0085) and JavaScript (U+2028, U+2029).
LINE_BREAKS = "\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029"
# A TSV field: a tab, a NUL (after which grep calls the whole output a binary file) and a line
# break become a space, as a message's lines are words of one field; every other control
# character (ESC, BEL, DEL, the C1 controls) is written as ``one_line`` writes it, so that a
# planted escape sequence shows as such instead of reaching the terminal of whoever reads it.
_TSV_FIELD = {**_ESCAPED, **dict.fromkeys(map(ord, "\t\0" + LINE_BREAKS), " ")}


def tsv_field(text: str) -> str:
    """``text`` as one field of one TSV line that a terminal shows as it is (see ``_TSV_FIELD``)."""
    return text.translate(_TSV_FIELD)


# The characters ``json`` leaves raw in a string that a reader still acts on: the line breaks
# U+0085, U+2028 and U+2029 (every line reader must see one line), DEL and the other C1
# controls (a terminal may read U+009B as the start of an escape sequence), and the lone
# surrogates, which no UTF-8 output can hold (``_SURROGATES``).
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def json_line(value) -> str:
    """``value`` as JSON on one line, non-ASCII text as it is but for what ``json`` leaves raw
    and a reader acts on (``_JSON_RAW``), escaped: it can only stand inside a string there."""
    return _JSON_RAW.sub(lambda raw: f"\\u{ord(raw[0]):04x}", json.dumps(value, ensure_ascii=False))


def note(message: str) -> None:
    """One plain line on stderr (never markup: it may hold paths and user text, whose control
    characters it writes as ``one_line`` does, as ``warn`` and ``Error:`` lines do), unless ``--quiet``."""
    if not is_quiet():
        print(one_line(message), file=sys.stderr, flush=True)


def unfinished_run_note(run_dir: Path, then: str = "") -> None:
    """Say that an interrupted run's classifier is its best so far, not a finished run's (one
    with none yet is the loader's error to explain); ``then``: what finishing it changes. A run
    resumed meanwhile still holds the classifier it wrote when it stopped, which its training
    is replacing."""
    from spamtune import run_catalog, runs

    if not runs.is_classifier_dir(run_dir):
        return
    status = run_catalog.run_status(run_dir)
    if status == run_catalog.INTERRUPTED:
        note(f"{run_dir} is unfinished: these are its best weights so far; finish it with: {run_catalog.resume_command(run_dir)}{then}")
    elif status == run_catalog.RUNNING and runs.resume_file(run_dir).is_file():
        note(f"{run_dir} is training again: these are its best weights from when it stopped; the run writes newer ones when it ends")


def warn(message: str) -> None:
    """A warning the user must see: on stderr even under ``--quiet``, bold red on a terminal."""
    from rich.console import Console

    Console(stderr=True, markup=False, highlight=False, soft_wrap=True).print(
        styled(("WARNING: ", "bold red"), (one_line(message), "bold"))
    )


@contextlib.contextmanager
def library_warnings_as_lines() -> Iterator[None]:
    """While the block runs, the library's ``SpamtuneWarning``s are ``warn`` lines (each message
    once); Python's other warnings are shown as before."""
    import warnings

    from spamtune.errors import SpamtuneWarning

    with warnings.catch_warnings():  # puts the filters and showwarning back on leaving
        warnings.simplefilter("default", SpamtuneWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, SpamtuneWarning):
                warn(str(message))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def detail(message: str) -> None:
    """A line on stderr only with ``--verbose``, written as ``note`` writes its line."""
    if is_verbose():
        print(one_line(message), file=sys.stderr, flush=True)


def require_stdout() -> None:
    """Refuse in one line, before any work, a command whose output has nowhere to go: a process
    started with stdout closed (``>&-``) has ``sys.stdout`` None."""
    if sys.stdout is None:
        from spamtune.errors import SpamtuneError

        raise SpamtuneError("stdout is closed: there is nowhere to write the output (redirect it instead, e.g. > /dev/null)")


def discard_stdout() -> None:
    """Point stdout at /dev/null, once writing to it has failed (a full disk, a reader gone), so
    that the flush at exit neither fails again nor says so a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def configure_hf_logging() -> None:
    """Hugging Face's own warnings (a retry line every few seconds while offline) only with
    ``--verbose``; spamtune reports the outcome itself. ``$HF_HUB_VERBOSITY`` still wins when set."""
    if not is_verbose() and os.environ.get("HF_HUB_VERBOSITY"):
        return
    level = logging.INFO if is_verbose() else logging.ERROR
    try:
        from huggingface_hub.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - a dependency; nothing to configure without it
        return
    hf_logging.set_verbosity(level)


# --------------------------------------------------------------------------- help


def _escape_markup(text: str) -> str:
    """Escape what rich would read as a markup tag (``[bold]``, ``[/]``), as rich.markup.escape does,
    without importing rich when the CLI starts."""
    return re.sub(r"(\\*)(\[[a-z#/@][^[]*?])", lambda m: m.group(1) * 2 + "\\" + m.group(2), text)


def examples_epilog(examples: Sequence[tuple[str, str]]) -> str:
    """An ``Examples:`` epilog for ``--help`` from (command, what it does) pairs: each example a dimmed
    ``# what it does`` line above its command (rich markup of our own; the commands themselves are escaped)."""
    lines = ["Examples:"]
    for command_line, comment in examples:
        lines += [f"[dim]# {_escape_markup(comment)}[/dim]", _escape_markup(command_line)]
    return "\n".join(lines)


def examples(*pairs: tuple[str, str]) -> Callable:
    """Declare a command's ``--help`` examples, (command, what it does) pairs, just above its function:
    every command, group default and subcommand alike. Registering it (``add_command``, ``command``,
    ``group_with_default``) turns them into the help's closing ``Examples:`` section."""

    def declare(function: Callable) -> Callable:
        function.help_examples = pairs
        return function

    return declare


def command(app: typer.Typer, name: str, help: str | None = None, short_help: str | None = None) -> Callable:
    """A decorator registering a function as the subcommand ``name``, its declared examples ending
    its ``--help``; ``short_help`` is its line in ``spamtune --help`` where the help's first
    sentence does not stand alone."""

    def register(function: Callable) -> Callable:
        epilog = examples_epilog(function.help_examples)
        return app.command(name, help=help, short_help=short_help, epilog=epilog)(function)

    return register


def add_command(app: typer.Typer, name: str, function: Callable, help: str | None = None, short_help: str | None = None) -> None:
    """Register ``function`` as the subcommand ``name``, its declared examples ending its ``--help``."""
    command(app, name, help, short_help)(function)


def group_with_default(default: Callable) -> typer.Typer:
    """A command group that also acts on its own (``spamtune download``, ``spamtune runs``): ``default``
    runs when no subcommand is given; its docstring is the group's help, as a command's is its own, and
    its declared examples end the group's ``--help``."""
    group = typer.Typer(invoke_without_command=True, no_args_is_help=False)
    group.callback(invoke_without_command=True, epilog=examples_epilog(default.help_examples))(default)
    return group


# --------------------------------------------------------------------------- options from the core's dataclasses


def flag(option: str) -> str:
    """The command-line flag of an option field: ``batch_size`` -> ``--batch-size``."""
    return "--" + option.replace("_", "-")


def field_help(cls: type, name: str) -> str:
    return cls.__dataclass_fields__[name].metadata["help"]


def dataclass_options(
    cls: type, names: Iterable[str] | None = None, checked: dict[str, typer.models.OptionInfo] | None = None
) -> list[inspect.Parameter]:
    """Typer options for the fields of ``cls`` (all, or ``names``): the field's default and help;
    ``choices`` become a Literal that Typer checks; a tuple default (the split fractions) is
    given as comma-separated text. ``checked`` replaces a field's option by one of the factories
    below (``device_option()``...), which check the value and list the choices in ``--help``."""
    hints = typing.get_type_hints(cls)
    wanted = set(names) if names is not None else None
    params = []
    for field in dataclasses.fields(cls):
        if wanted is not None and field.name not in wanted:
            continue
        meta, annotation, default = field.metadata, hints[field.name], field.default
        if isinstance(default, tuple):
            annotation, default = str, ",".join(f"{x:g}" for x in default)
        if "choices" in meta:
            annotation = Literal[tuple(meta["choices"])]
        flags = (meta["flag"],) if "flag" in meta else ()
        option = (checked or {}).get(field.name) or typer.Option(default, *flags, help=meta["help"])
        params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return params


def with_dataclass_options(*options: list[inspect.Parameter]) -> Callable:
    """Give a command written as ``def command(<its own parameters>, **options)`` the options'
    parameters too; Typer reads the signature and passes them in ``options``."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        command.__signature__ = signature.replace(parameters=[*(p for group in options for p in group), *own])
        return command

    return decorate


# --long, shared by predict, evaluate and filter. spamtune.mail names the modes without torch,
# so importing it here keeps --help fast.
LongMode = Literal[LONG_MODES]
LONG_HELP = (
    "How a message longer than the model's window is read: its first tokens (head), its first and last (head-tail), "
    "or overlapping windows over all of it, the most spam-like one deciding (chunks)."
)


def long_option(show_default: str):
    """The ``--long`` option; ``show_default`` says what each command reads when it is not given."""
    return typer.Option(None, "--long", help=LONG_HELP, show_default=show_default)


def json_option(json_format: str):
    """``--json``: the flag a script reaches for first, the same as ``--format <json_format>``."""
    return typer.Option(False, "--json", help=f"The same as --format {json_format}.")


def listing_format_option():
    """``--format`` of a listing (``cache ls``, ``bases ls``): a table, or JSON lines."""
    return typer.Option(None, "--format", help="text: a table; json: one JSON object per line.", show_default="text")


def one_choice(choices: dict[str, bool], missing: str | None = None) -> None:
    """At most one of ``choices`` (each named as the user gives it, and whether it was given):
    more is a usage error naming the ones given; none is one too when ``missing`` says so."""
    from spamtune.errors import SpamtuneUsageError

    given = [name for name, on in choices.items() if on]
    if not given and missing is not None:
        raise SpamtuneUsageError(missing)
    if len(given) > 1:
        *first, last = choices
        raise SpamtuneUsageError(f"give one of {', '.join(first)} and {last}, not {' and '.join(given)}")


def chosen_format(output_format, as_json: bool, json_format, default):
    """The output format asked for: ``--json`` is ``json_format``; nothing given is ``default``.
    ``--json`` beside another ``--format`` is a usage error rather than a silent pick."""
    if as_json:
        if output_format is not None and output_format != json_format:
            from spamtune.errors import SpamtuneUsageError

            given = getattr(output_format, "value", output_format)
            raise SpamtuneUsageError(f"--json and --format {given} ask for two formats; give one")
        return json_format
    return default if output_format is None else output_format


# --------------------------------------------------------------------------- values checked while parsing


def _choice_text(choices: tuple[str, ...]) -> str:
    return "<" + "|".join(choices) + ">"


def _complete_from(choices: tuple[str, ...]):
    def complete(incomplete: str) -> list[str]:
        return [c for c in choices if c.startswith(incomplete)]

    return complete


def _check_choice(choices: tuple[str, ...]):
    def callback(value: str | None) -> str | None:
        if value is None:
            return None
        key = value.strip().lower()
        if key not in choices:
            raise typer.BadParameter(f"'{value}' is not one of {', '.join(choices)}")
        return key

    return callback


def choice_option(default: str, flag: str, choices: tuple[str, ...], help: str, **kwargs):
    """A string option limited to ``choices`` (case-insensitive), listed in ``--help``."""
    return typer.Option(
        default, flag, metavar=_choice_text(choices), callback=_check_choice(choices),
        autocompletion=_complete_from(choices), help=help, **kwargs,
    )


# The device and precision choices of spamtune.device (DEVICES, PRECISIONS), spelled out so the
# CLI starts without torch; tests check that they agree.
# Said in every --threshold's help: such a run has no threshold to move, and refuses one.
THRESHOLD_SCOPE = "Two-class runs only: a run of more classes decides by the most probable one."
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
POOLINGS = ("last-real", "last", "mean")
_CUDA_INDEX = re.compile(r"^cuda:\d+$")


def choose_training_spin(option_sets: Iterable[dict], *, one_process: bool = True) -> None:
    """How long training's idle OpenMP threads spin before they sleep, set before torch loads
    (``threads.prefer_passive_waiting``), for runs with these options (a sweep's combinations).

    Runs that all train the final block alone can leave cores to other processes that want them
    (their numbers do not depend on the thread count; ``threads.CoreWatch``), so they spin about
    a millisecond (``threads.LONE_SPIN_COUNT``): a step took ~15% less time on 16 cores, a few
    percent on two. Any other run, none given (a resumed run, whose options are read with
    torch), and ranks of several processes (``one_process`` false, or started by torchrun) spin
    about 10 µs, which costs a machine's other work little."""
    from spamtune.threads import LONE_SPIN_COUNT, TRAINING_SPIN_COUNT, prefer_passive_waiting

    runs = list(option_sets)
    one_process = one_process and os.environ.get("WORLD_SIZE", "1") == "1"  # WORLD_SIZE: set by torchrun
    alone = one_process and bool(runs) and all(
        trains_final_block_alone(o["trainable"], o["pooling"], o["shortcuts"]) and o["device"] in ("auto", "cpu") for o in runs
    )
    prefer_passive_waiting(spin_count=LONE_SPIN_COUNT if alone else TRAINING_SPIN_COUNT)


def _check_device(value: str) -> str:
    key = value.strip().lower()
    if key in DEVICES or _CUDA_INDEX.match(key):
        return key
    raise typer.BadParameter(f"'{value}' is not one of {', '.join(DEVICES)} (or cuda:N)")


def device_option(default: str = "auto", help: str = "Where to compute; auto: CUDA, then Apple's MPS, then the CPU."):
    return typer.Option(
        default, "--device", metavar="<auto|cpu|cuda|cuda:N|mps>", callback=_check_device,
        autocompletion=_complete_from(DEVICES), help=help,
    )


def precision_option(help: str = "auto: bf16 where the hardware runs it natively (recent GPUs and CPUs), else fp32."):
    return choice_option("auto", "--precision", PRECISIONS, help)


def pooling_option(default: str = "last-real"):
    return choice_option(
        default, "--pooling", POOLINGS,
        "last-real: the last non-padding token; last: the last padded position (the book's); mean: all real tokens.",
    )


def _check_model(value: str) -> str:
    """A named size (or alias such as gpt2, 124M) or a JSON config file; checked against the core's list."""
    from spamtune.model_names import canonical_model_name, names_config_file

    if names_config_file(value):
        return value
    from spamtune.errors import SpamtuneError

    try:
        return canonical_model_name(value)
    except SpamtuneError:
        raise typer.BadParameter(
            f"'{value}' is not one of {', '.join(MODEL_NAMES)} (aliases gpt2, 124M, 355M, 774M, 1558M), nor a JSON config file"
        ) from None


def model_option(default: str = "gpt2-small"):
    return typer.Option(
        default, "--model", metavar="<" + "|".join(MODEL_NAMES) + "|FILE.json>", callback=_check_model,
        autocompletion=_complete_from(MODEL_NAMES),
        help="A GPT-2 size (aliases: gpt2, 124M, 355M, 774M, 1558M), tiny (a small from-scratch shape), "
        "or a JSON config file.",
    )


TRAINABLE_PRESETS = ("head", "last-block", "last-N-blocks", "all", "lora")
_TRAINABLE = re.compile(r"^(head|last-block|all|lora|last-[1-9]\d*-blocks?)$")


def _check_trainable(value: str) -> str:
    key = value.strip().lower()
    if not _TRAINABLE.match(key):
        raise typer.BadParameter(f"'{value}' is not one of head, last-block, last-N-blocks (e.g. last-2-blocks), all, lora")
    return key


def trainable_option(default: str = "last-block"):
    return typer.Option(
        default, "--trainable", metavar="<head|last-block|last-N-blocks|all|lora>", callback=_check_trainable,
        autocompletion=_complete_from(("head", "last-block", "last-2-blocks", "all", "lora")),
        help="What trains: head only; head + last block + final LayerNorm (the book's); the last N blocks; all.",
    )


# --------------------------------------------------------------------------- where things are


def data_dir_option():
    return typer.Option(
        None, "--data-dir", metavar="DIR", show_default=False,
        help=f"Data root holding downloads, splits and runs/. Default: ${paths.ENV_HOME}, else {paths.default_data_root()}.",
    )


def complete_run_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Run names for the shell: those of the data root that ``--data-dir``, typed before the run
    (on the command or on ``runs``), names, else the usual one. A data root that cannot be read
    completes nothing: an error printed here would land in the middle of the user's line."""
    from spamtune.errors import SpamtuneError

    try:
        names = [p.name for p in paths.run_folders(paths.data_root(_typed_data_dir(ctx)))]
    except (OSError, SpamtuneError):
        return []
    return [name for name in names if name.startswith(incomplete)]


def complete_sweep_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Sweep names for the shell, as ``complete_run_names`` gives run names."""
    from spamtune.errors import SpamtuneError
    from spamtune.sweep_catalog import sweep_folders

    try:
        names = [p.name for p in sweep_folders(paths.data_root(_typed_data_dir(ctx)))]
    except (OSError, SpamtuneError):
        return []
    return sorted(name for name in names if name.startswith(incomplete))


def _typed_data_dir(ctx: typer.Context | None) -> str | Path | None:
    while ctx is not None:
        if ctx.params.get("data_dir") is not None:
            return ctx.params["data_dir"]
        ctx = ctx.parent
    return None


def run_option(
    help: str = "A run name (under <data root>/runs/, see `spamtune runs`) or a run folder's path.",
    show_default: str | bool = "the newest finished run",
):
    return typer.Option(
        None, "--run", metavar="RUN", show_default=show_default, autocompletion=complete_run_names, help=help,
    )


def input_option(help: str, *, allow_dash: bool = False):
    return typer.Option(None, "--input", "-i", metavar="PATH", help=help, dir_okay=False, allow_dash=allow_dash)


def input_alias_option():
    """The old ``--file``/``-f`` spelling of ``--input``, still accepted but no longer shown."""
    return typer.Option(None, "--file", "-f", hidden=True, dir_okay=False)


def pick_input(input_file: Path | None, old_spelling: Path | None) -> Path | None:
    from spamtune.errors import SpamtuneUsageError

    if input_file is not None and old_spelling is not None:
        raise SpamtuneUsageError("give --input once (--file is its old name)")
    return input_file if input_file is not None else old_spelling
