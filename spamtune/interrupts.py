"""Ctrl-C held back from code that cannot be cut short cleanly, and delivered right after it.

Python raises ``KeyboardInterrupt`` in whatever Python code the main thread runs when SIGINT
arrives. Where that code was called from native code, the interrupt may not come back out as
one: safetensors turns a ``KeyboardInterrupt`` raised while ``get_tensor`` builds its tensor
into ``ValueError: could not determine the shape of object type 'torch.storage.UntypedStorage'``
(about 4 Ctrl-Cs in 10 that land in a read, safetensors 0.8), which the command can only report
as a bug. ``sigint_deferred`` holds a SIGINT that arrives inside its block and delivers it as
the block ends, so the interrupt is the usual one, a little late (``read_tensor``).

torch's own import has the same trouble (see ``hold_sigint_while_torch_loads``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import sys
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Run the block with SIGINT held: one that arrives meanwhile goes, once the block is over,
    to the handler it would have gone to (Python's raises ``KeyboardInterrupt``; an ignored one
    stays ignored). Off the main thread, or with SIGINT not handled by Python, the block runs as
    it is: signals reach Python's handlers on the main thread only, and only it may set them."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is None:
        yield
        return
    arrived: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if arrived:
            signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def on_meta_device() -> Iterator[None]:
    """``with torch.device("meta")``, Ctrl-C held for the block (it only lays out a model's
    shapes: milliseconds). torch keeps the device on a stack of modes that it pops and pushes
    back around calls in the block, partly in Python; one interrupt seen there left the stack
    empty when the block ended (``trying to pop from empty mode stack``, an unexpected error
    instead of the interrupt)."""
    import torch

    with sigint_deferred(), torch.device("meta"):
        yield


def read_tensor(handle, name: str):
    """``handle.get_tensor(name)`` of a safetensors ``safe_open`` handle, Ctrl-C held until it
    returns (see the module doc: safetensors would make the interrupt a ``ValueError``)."""
    with sigint_deferred():
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
    ``sigint_deferred``; then steps aside (it finds nothing else, and torch only once)."""

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
        with sigint_deferred():
            self._loader.exec_module(module)
