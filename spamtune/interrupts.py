"""Ctrl-C held back from code that cannot be cut short cleanly, and delivered right after it.

Python raises ``KeyboardInterrupt`` in whatever Python code the main thread runs when SIGINT
arrives. Where that code was called from native code, the interrupt may not come back out as
one: safetensors turns a ``KeyboardInterrupt`` raised while ``get_tensor`` builds its tensor
into ``ValueError: could not determine the shape of object type 'torch.storage.UntypedStorage'``
(about 4 Ctrl-Cs in 10 that land in a read, safetensors 0.8), which the command can only report
as a bug. ``interrupts_deferred`` holds a SIGINT that arrives inside its block and delivers it as
the block ends, so the interrupt is the usual one, a little late (``read_tensor``).

torch's own import has the same trouble (see ``hold_sigint_while_torch_loads``).

A training command also stops on SIGTERM as it does on Ctrl-C (``sigterm_as_interrupt``, as does
``export``, whose killed write would leave its temporary file behind):
that is how systemd stops a service, how ``timeout`` ends a command and how a batch scheduler
warns a job at its time limit, and each of them should leave the run with its best weights
written and the line that resumes it, not a process gone mid-step. Such a stop exits with
status 143 (128 + SIGTERM) rather than Ctrl-C's 130 (``interrupted_status``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Iterator


# The signal that stopped the command, when it was SIGTERM taken as an interrupt.
_stopped_by: list[int] = []


def _sigterm_raises(signum, frame) -> None:
    _stopped_by.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Run the block with SIGTERM raising ``KeyboardInterrupt`` where the main thread is, as
    Ctrl-C does, so that every clean stop made for Ctrl-C serves it too; after the block, the
    handler it had. Off the main thread, where no handler can be set, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _sigterm_raises)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_status() -> int:
    """The exit status of a command stopped by an interrupt: 143 after SIGTERM, else 130."""
    return 128 + (signal.SIGTERM if _stopped_by else signal.SIGINT)


# Set by ``--devices N``'s launcher for the ranks it starts: the launcher says "interrupted"
# once for all of them, unless rank 0 said more (finetune's checkpoint and --resume command)
# and recorded so by creating the file this names.
INTERRUPT_NOTE_ENV = "SPAMTUNE_INTERRUPT_NOTE"


def _rank_of_several() -> int | None:
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def speaks_for_the_ranks() -> bool:
    """Whether this process says that it was interrupted: a single process, or rank 0 of a job
    torchrun started; every rank gets the signal, and one line is enough. Ranks that
    ``--devices`` started leave it to their launcher."""
    rank = _rank_of_several()
    return rank is None or (rank == 0 and not os.environ.get(INTERRUPT_NOTE_ENV))


def tell_the_launcher_it_was_said() -> None:
    """Rank 0 has said what the interrupt left: ``--devices``' launcher need not add its line."""
    note = os.environ.get(INTERRUPT_NOTE_ENV)
    if note and _rank_of_several() == 0:
        try:
            open(note, "x").close()
        except OSError:  # already there, or its folder gone: the launcher adds its line
            pass


def forget_stop() -> None:
    """A new command begins (the CLI run again in one process, as tests do): no stop yet."""
    _stopped_by.clear()


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run the block with Ctrl-C (and SIGTERM, where ``sigterm_as_interrupt`` takes it as one)
    held: one that arrives meanwhile goes, once the block is over, to the handler it would have
    gone to (Python's raises ``KeyboardInterrupt``; an ignored one stays ignored). Off the main
    thread, or with SIGINT not handled by Python, the block runs as it is: signals reach
    Python's handlers on the main thread only, and only it may set them."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    held = [signal.SIGINT] + ([signal.SIGTERM] if signal.getsignal(signal.SIGTERM) is _sigterm_raises else [])
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in arrived[:1]:  # the first stops the command; a second would change nothing
            signal.raise_signal(signum)


@contextlib.contextmanager
def on_meta_device() -> Iterator[None]:
    """``with torch.device("meta")``, Ctrl-C held for the block (it only lays out a model's
    shapes: milliseconds). torch keeps the device on a stack of modes that it pops and pushes
    back around calls in the block, partly in Python; one interrupt seen there left the stack
    empty when the block ended (``trying to pop from empty mode stack``, an unexpected error
    instead of the interrupt)."""
    import torch

    with interrupts_deferred(), torch.device("meta"):
        yield


def read_tensor(handle, name: str):
    """``handle.get_tensor(name)`` of a safetensors ``safe_open`` handle, Ctrl-C held until it
    returns (see the module doc: safetensors would make the interrupt a ``ValueError``)."""
    with interrupts_deferred():
        return handle.get_tensor(name)


def hold_sigint_while_torch_loads() -> None:
    """From now on, the first ``import torch`` runs with Ctrl-C held (1.3 s on a 2-core
    machine): its import loads numpy from C, and an interrupt raised in there is not passed
    on. torch goes on without numpy, so the interrupt is lost (the command runs to its end, or dies later on a
    half-imported numpy: ``module 'numpy' has no attribute 'intp'``, ``cannot load module more
    than once per process``). Held, it comes once torch is loaded, as the usual interrupt."""
    if "torch" not in sys.modules and not any(isinstance(finder, _TorchLoadsWhole) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TorchLoadsWhole())


class _TorchLoadsWhole:
    """An import finder that finds ``torch`` as the others would, and loads it under
    ``interrupts_deferred``; then steps aside (it finds nothing else, and torch only once)."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderWithSigintHeld(spec.loader)
        return spec


class _LoaderWithSigintHeld:
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        # The module keeps its own loader, as if this one had never been there.
        module.__loader__ = module.__spec__.loader = self._loader
        with interrupts_deferred():
            self._loader.exec_module(module)
