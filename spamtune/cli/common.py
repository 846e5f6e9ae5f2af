"""What the subcommands share: options built from the core's option dataclasses, and a console
that never reads user text as markup.

Options: the dataclasses in ``spamtune.options`` hold every default and help text; a command
lists the fields it takes and ``with_dataclass_options`` adds them to its signature as Typer
options, so nothing is written twice (as litgpt builds its CLI from its dataclasses).

Rendering: paths, labels and messages may hold ``[`` and ``]`` (``runs/weird[/x]run``, a label
``[/x]``); rich would read them as markup, drop them or fail. ``stderr_console`` prints plain
text; what needs a style is built with ``styled``, and table cells go through ``cell``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal

import typer

from spamtune.mail import LONG_MODES

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


def flag(option: str) -> str:
    """The command-line flag of an option field: ``batch_size`` -> ``--batch-size``."""
    return "--" + option.replace("_", "-")


def field_help(cls: type, name: str) -> str:
    return cls.__dataclass_fields__[name].metadata["help"]


def dataclass_options(cls: type, names: Iterable[str] | None = None) -> list[inspect.Parameter]:
    """Typer options for the fields of ``cls`` (all, or ``names``): the field's default and help;
    ``choices`` become a Literal that Typer checks; a tuple default (the split fractions) is
    given as comma-separated text."""
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
        option = typer.Option(default, *flags, help=meta["help"])
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


def stderr_console() -> Console:
    """Rich on stderr with markup and highlighting off: every string prints as it is."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, markup=False, highlight=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line of plain strings and ``(text, style)`` pairs, none of it read as markup."""
    from rich.text import Text

    return Text.assemble(*parts)


def cell(value: object) -> Text:
    """A table cell or heading shown as it is (rich tables read plain strings as markup)."""
    from rich.text import Text

    return Text(str(value))
