"""One preparation's splits at a time: ``spamtune prepare`` writes and renames a data root's
five files (``prepare.output_files``) holding an exclusive ``flock`` on the root folder, and the
commands that read them (finetune, evaluate, calibrate, sweep) hold a shared one while they read.

So a reader gets the files of one preparation, never the train split of one and the validation
split of the next, and two prepares into one root replace the set one after the other: the set
that stays is the last one written, whole. A lock on the folder itself needs no file in it (a
read-only root can be locked for reading), and the kernel drops the lock of a killed process.
Where the file system has no ``flock`` (Windows, some network file systems) nothing is locked.

A waiting prepare goes before the readers that come after it: shared locks alone would let
readers whose holds overlap (evaluations run in a loop by several jobs) keep the folder from ever
being free for it. So a prepare first takes an exclusive ``flock`` on a second file,
``WRITER_WAITING_MARK``, and holds it while it waits and writes; a reader takes a shared lock on
that file and lets it go before it takes its own on the folder, so it queues behind any prepare
already waiting. The prepare removes the file when it is done; one a killed prepare left holds
no lock, and the next prepare takes it over.

A lock does not outlive a prepare killed (or failing) among its five renames, which leaves a set
mixed from two preparations: ``renaming`` marks the root for that time, and a reader that finds
the mark with no prepare at work refuses the splits.
"""

from __future__ import annotations

import contextlib
import os
import stat
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
# Present in a data root while a prepare waits for its lock or holds it (or after one was killed
# then): locked, it holds back the readers that come after the prepare.
WRITER_WAITING_MARK = ".prepare-waiting"
# Times a prepare takes the mark again when the one it locked was removed meanwhile (each time by
# a prepare that had it and is done: more than a few in a row is a file system whose files
# do not keep their identity, where the prepare goes on without the mark).
_MARK_ATTEMPTS = 8
# The mark is opened so that no link planted under its name is followed, nor a FIFO's open blocks.
_MARK_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


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
    replacing them waits for the read, and a read waits for the set being written, or for a
    prepare already waiting to write one. Not to be taken again while held: a prepare that came
    between would wait for the outer hold, and the inner one for the prepare."""
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
    wait = _Wait(root, waiting, busy)
    try:
        if how == "LOCK_EX":
            with _writer_waiting(root, wait):
                wait.lock(fd, fcntl.LOCK_EX)
                yield
        else:
            _pass_waiting_writers(root, wait)
            wait.lock(fd, fcntl.LOCK_SH)
            yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _writer_waiting(root: Path, wait: _Wait) -> Iterator[None]:
    """``root``'s ``WRITER_WAITING_MARK`` locked exclusively for the block (behind another prepare
    holding it), then removed. Where it cannot be had (a read-only root, a link or anything but a
    file planted under its name, no flock) the block runs without: the prepare then waits for a
    moment with no reader, as it did before the mark."""
    mark = root / WRITER_WAITING_MARK
    fd = None
    for _ in range(_MARK_ATTEMPTS):
        try:
            fd = os.open(mark, _MARK_FLAGS | os.O_CREAT, 0o644)
        except OSError:
            break
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            locked = regular and wait.lock(fd, fcntl.LOCK_EX)
            if locked and _names(mark, fd):
                break
            if regular and not locked and _names(mark, fd):  # no flock here: a mark that marks nothing
                with contextlib.suppress(OSError):
                    mark.unlink()
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        fd = None
        if not locked:
            break
        # else the prepare that held it removed it, once done: take the one made now
    if fd is None:
        yield
        return
    try:
        yield
    finally:
        if _names(mark, fd):  # never another prepare's, made once this one's was gone
            with contextlib.suppress(OSError):
                mark.unlink()
        os.close(fd)


def _pass_waiting_writers(root: Path, wait: _Wait) -> None:
    """Wait for a prepare that holds ``root``'s ``WRITER_WAITING_MARK`` (waiting for the readers
    before it, or writing) to let go of it; at once where there is none, or no usable mark."""
    try:
        fd = os.open(root / WRITER_WAITING_MARK, _MARK_FLAGS)
    except OSError:  # none: no prepare waits; or a link planted under its name, never followed
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            wait.lock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is still the file open as ``fd`` (not removed, nor replaced)."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


class _Wait:
    """One side's wait for the other, across the locks it takes: ``waiting`` said (a
    ``SpamtuneWarning``) once it is long enough to look like a hang, ``busy`` raised once it is
    too long in all."""

    def __init__(self, root: Path, waiting: str, busy: str):
        self.root, self.waiting, self.busy = root, waiting, busy
        self.started, self.said = time.monotonic(), False

    def lock(self, fd: int, how: int) -> bool:
        """The lock ``how`` on ``fd``, once the other side lets go; False where the file system
        has no flock (nothing locked, as everywhere then)."""
        while True:
            try:
                fcntl.flock(fd, how | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                waited = time.monotonic() - self.started
                if waited >= WAIT_SECONDS:
                    raise SpamtuneError(self.busy) from None
                if waited >= NOTICE_SECONDS and not self.said:
                    warnings.warn(self.waiting, SpamtuneWarning)
                    self.said = True
                time.sleep(_POLL_SECONDS)
            except OSError as exc:
                if exc.errno in NO_FLOCK_ERRNOS:
                    return False
                raise SpamtuneError(f"cannot lock {self.root}: {exc.strerror or exc}") from None
