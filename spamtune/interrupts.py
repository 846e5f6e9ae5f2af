"""Ctrl-C held back from code that cannot be cut short cleanly, and delivered right after it.

Python raises ``KeyboardInterrupt`` in whatever Python code the main thread runs when SIGINT
arrives. Where that code was called from native code, the interrupt may not come back out as
one: safetensors turns a ``KeyboardInterrupt`` raised while ``get_tensor`` builds its tensor
into ``ValueError: could not determine the shape of object type 'torch.storage.UntypedStorage'``
(about 4 Ctrl-Cs in 10 that land in a read, safetensors 0.8), which the command can only report
as a bug. ``sigint_deferred`` holds a SIGINT that arrives inside its block and delivers it as
the block ends, so the interrupt is the usual one, a little late (``read_tensor``).
"""

from __future__ import annotations

import contextlib
import signal
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


def read_tensor(handle, name: str):
    """``handle.get_tensor(name)`` of a safetensors ``safe_open`` handle, Ctrl-C held until it
    returns (see the module doc: safetensors would make the interrupt a ``ValueError``)."""
    with sigint_deferred():
        return handle.get_tensor(name)

