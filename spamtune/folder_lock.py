"""Who writes a kept prefix cache's entry: a shared ``flock`` on its folder, held until the entry
is complete (the kernel drops the lock of a killed process).

So ``spamtune cache ls`` can tell an entry being written (``incomplete``) from one a killed or
crashed run left (``abandoned``), and ``cache rm --stale`` removes only the latter. Shared, so
that the ranks of one run may write the same entry at once. Where the file system has no
``flock`` (Windows, some network file systems) nothing is locked, and no entry is ever taken for
abandoned: that errs on the side of keeping it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so an incomplete entry is never taken for abandoned
    fcntl = None

# What flock raises on a file system that has none (some network file systems): lock nothing there.
NO_FLOCK_ERRNOS = (errno.ENOLCK, errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP)
# Times a writer makes its entry's folder again when ``cache rm`` removed it before it was locked.
_CLAIM_ATTEMPTS = 3


def lock_folder(folder: Path, how: int) -> int:
    """An open descriptor of ``folder`` holding the ``flock`` ``how``. Raises ``BlockingIOError``
    when another process holds a lock in the way (``how`` with ``LOCK_NB``), and
    ``FileNotFoundError`` when the folder was removed (or replaced) before the lock was had: a
    lock on a removed folder guards nothing."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, how)
        held, now = os.fstat(fd), os.stat(folder, follow_symlinks=False)
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            raise FileNotFoundError(errno.ENOENT, "removed while being locked", str(folder))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _claim_for_writing(entry: Path) -> int | None:
    """Make ``entry``'s folder and hold a shared lock on it: shared, so that the ranks of one
    run may write the same entry at once. None where the file system has no flock: the entry
    is written unlocked, and ``ls`` cannot take it for abandoned either (its probe fails too)."""
    for attempt in range(_CLAIM_ATTEMPTS):
        entry.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return None
        try:
            return lock_folder(entry, fcntl.LOCK_SH)
        except FileNotFoundError:  # `cache rm --stale` took the new, empty folder for abandoned
            if attempt == _CLAIM_ATTEMPTS - 1:
                raise
        except OSError as exc:
            if exc.errno not in NO_FLOCK_ERRNOS:
                raise
            return None
    raise AssertionError("unreachable: the last attempt returns or raises")


@contextlib.contextmanager
def held_for_writing(entry: Path) -> Iterator[None]:
    """``entry``'s folder, made and locked for as long as it is written (the kernel drops the
    lock of a killed process). On leaving, a folder the write left empty (Ctrl-C, a failure, no
    room) is removed, unless another process is writing it too."""
    fd = _claim_for_writing(entry)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
        with unclaimed(entry) as free, contextlib.suppress(OSError):
            if free:
                entry.rmdir()  # only if empty: a complete entry stays


@contextlib.contextmanager
def unclaimed(folder: Path, when_unknown: bool = False) -> Iterator[bool]:
    """Whether no process writes the entry in ``folder``, known by holding its exclusive lock,
    so none can start to until the block ends. False where a writer holds it; ``when_unknown``
    where the folder is gone or there is no telling (no flock): False, the default, claims
    nothing abandoned; True lets a removal the user asked for go ahead."""
    if fcntl is None:
        yield when_unknown
        return
    try:
        fd = lock_folder(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        yield False
        return
    except OSError:
        yield when_unknown
        return
    try:
        yield True
    finally:
        os.close(fd)
