"""One preparation's splits at a time: ``spamtune prepare`` writes and renames a data root's
five files (``prepare.output_files``) holding an exclusive ``flock`` on the root folder, and the
commands that read them (finetune, evaluate, calibrate, sweep) hold a shared one while they read.

So a reader gets the files of one preparation, never the train split of one and the validation
split of the next, and two prepares into one root replace the set one after the other: the set
that stays is the last one written, whole. A lock on the folder itself needs no file in it (a
read-only root can be locked for reading), and the kernel drops the lock of a killed process.
Where the file system has no ``flock`` (Windows, some network file systems) nothing is locked.

A lock does not outlive a prepare killed (or failing) among its five renames, which leaves a set
mixed from two preparations: ``renaming`` marks the root for that time, and a reader that finds
the mark with no prepare at work refuses the splits.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from spamtune.errors import SpamtuneError, SpamtuneWarning
from spamtune.folder_lock import NO_FLOCK_ERRNOS
from spamtune.fsutil import atomic_write_bytes

try:
    import fcntl
except ImportError:  # Windows: no flock, nothing is locked
    fcntl = None

# How long one side waits for the other before saying so: a prepare holds the lock while it
# writes the splits, a reader while it reads them (0.9 s each for 223,000 texts, 20 MB).
WAIT_SECONDS = 120.0
NOTICE_SECONDS = 1.0  # and how long before it says that it waits
_POLL_SECONDS = 0.05
# Present in a data root only while a prepare renames its files into place.
RENAMING_MARK = ".prepare-renaming"


@contextlib.contextmanager
def replacing_splits(root: Path) -> Iterator[None]:
    """Held while ``root``'s prepared files are written and renamed into place: no reader is
    reading them meanwhile, and no other prepare writes its own."""
    waiting = f"waiting for another process to finish reading the prepared splits in {root}"
    busy = f"the prepared splits in {root} are still being read by another process after {WAIT_SECONDS:g} s; try again when it is done"
    with _held(root, "LOCK_EX", waiting, busy):
        yield


@contextlib.contextmanager
def reading_splits(root: Path) -> Iterator[None]:
    """Held while ``root``'s label map and splits are read (and fingerprinted): a prepare
    replacing them waits for the read, and a read waits for the set being written."""
    waiting = f"waiting for `spamtune prepare` to finish writing the prepared splits in {root}"
    busy = f"the prepared splits in {root} are still being written by `spamtune prepare` after {WAIT_SECONDS:g} s; try again when it ends"
    with _held(root, "LOCK_SH", waiting, busy):
        if os.path.lexists(root / RENAMING_MARK):  # no prepare is renaming now: one was stopped doing so
            raise SpamtuneError(
                f"the prepared splits in {root} may be from two preparations: a `spamtune prepare` was stopped "
                "while it renamed its files into place; run it again"
            )
        yield


@contextlib.contextmanager
def renaming(root: Path) -> Iterator[None]:
    """Mark ``root`` while a prepare renames its files into place (holding ``replacing_splits``);
    the mark goes only once every rename is done, so a prepare killed or failing among them leaves
    it for ``reading_splits`` to find."""
    atomic_write_bytes(root / RENAMING_MARK, b"")  # never through a link planted under its name
    yield
    (root / RENAMING_MARK).unlink(missing_ok=True)


@contextlib.contextmanager
def _held(root: Path, how: str, waiting: str, busy: str) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # no root (nothing to read, nothing read meanwhile), or not a folder: the reads and writes say so
        yield
        return
    try:
        _lock(fd, getattr(fcntl, how), root, waiting, busy)
        yield
    finally:
        os.close(fd)


def _lock(fd: int, how: int, root: Path, waiting: str, busy: str) -> None:
    """The lock, once the other side lets go; ``waiting`` said (a ``SpamtuneWarning``) once the
    wait is long enough to look like a hang, ``busy`` raised once it is too long."""
    started = time.monotonic()
    said = False
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            waited = time.monotonic() - started
            if waited >= WAIT_SECONDS:
                raise SpamtuneError(busy) from None
            if waited >= NOTICE_SECONDS and not said:
                warnings.warn(waiting, SpamtuneWarning)
                said = True
            time.sleep(_POLL_SECONDS)
        except OSError as exc:
            if exc.errno in NO_FLOCK_ERRNOS:  # a file system without flock: unlocked, as everywhere then
                return
            raise SpamtuneError(f"cannot lock {root}: {exc.strerror or exc}") from None
