"""Reading stdin, or any pipe, to its real end when another process made it non-blocking.

``O_NONBLOCK`` belongs to the open file, not to one process's descriptor: every process that
shares a pipe or terminal shares the flag, and any of them can set it (Node.js does on its own
stdio). A read of such a stream comes back empty (``None``, or ``BlockingIOError``) whenever
nothing has arrived yet, and a loop that stops at an empty read takes the writer's first pause
for the end of its input: ``filter`` passed on the head of a message with exit status 0, and
its tail was lost. ``waiting`` gives a reader whose empty read means the end, as it does for a
blocking stream.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from typing import BinaryIO


def non_blocking_descriptor(stream: BinaryIO) -> int | None:
    """The file descriptor of ``stream`` when it is in non-blocking mode, else None."""
    try:
        fd = stream.fileno()
        return None if os.get_blocking(fd) else fd
    except (OSError, ValueError, AttributeError):  # io.BytesIO, a closed stream, no get_blocking
        return None


def waiting(stream: BinaryIO) -> BinaryIO:
    """``stream`` itself where it blocks, else a ``WaitingReader`` over it."""
    fd = non_blocking_descriptor(stream)
    return stream if fd is None else WaitingReader(stream, fd)


class WaitingReader:
    """The reads of a non-blocking ``stream`` (descriptor ``fd``), each waiting for data or the
    end: empty only at the end. A read may return less than asked for, as ``read1`` does."""

    def __init__(self, stream: BinaryIO, fd: int):
        self.stream, self.fd = stream, fd

    def read(self, size: int = -1) -> bytes:
        return self._waited(self.stream.read, size)

    def read1(self, size: int = -1) -> bytes:
        return self._waited(getattr(self.stream, "read1", self.stream.read), size)

    def peek(self, size: int = 1) -> bytes:
        return self._waited(self.stream.peek, size)  # type: ignore[attr-defined]

    def fileno(self) -> int:
        return self.fd

    def _waited(self, read: Callable[[int], bytes | None], size: int) -> bytes:
        data = _attempt(read, size)
        while not data:
            # Nothing yet, or the end: select says the stream is readable in either case, and
            # a read then empty, not None, is the end.
            select.select([self.fd], [], [])
            data = _attempt(read, size)
            if data == b"":
                return b""
        return data


def _attempt(read: Callable[[int], bytes | None], size: int) -> bytes | None:
    try:
        return read(size)
    except BlockingIOError:
        return None


def read_up_to(source: BinaryIO, limit: int, block: int = 1 << 16) -> bytes:
    """Up to ``limit`` bytes of ``source``, fewer only at its end: pipes hand data over in
    pieces, so it is read until full or at the end."""
    parts, size = [], 0
    while size < limit:
        data = source.read(min(block, limit - size))
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b"".join(parts)
