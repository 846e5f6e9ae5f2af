"""The readers of mail: a Maildir, an mbox file, a folder tree of message files or a single
message file, each as ``(id, raw bytes)`` in a stable order (``iter_messages``), and the labelled
sources of the command line (``LABEL=PATH``). A listed file that cannot be read is an
``Unreadable`` in its place, and a subfolder that cannot be listed a warning. What the model
reads of a message is ``spamtune.mail``'s.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from spamtune.errors import SpamtuneError, SpamtuneUsageError, SpamtuneWarning
from spamtune.fsutil import expand_user
from spamtune.mail import MAX_MESSAGE_BYTES, Unreadable, header_value

_READ_BLOCK = 1 << 16


@dataclass(frozen=True)
class MailSource:
    """A labelled mail source from the command line: ``LABEL=PATH``."""

    label: str
    path: Path


def parse_source(spec: str) -> MailSource:
    """``"spam=~/Mail/Junk"`` -> ``MailSource("spam", Path("~/Mail/Junk").expanduser())``."""
    label, sep, path = spec.partition("=")
    label = label.strip()
    if not sep or not label or not path:
        raise SpamtuneUsageError(f"a mail source is LABEL=PATH (e.g. spam=~/Mail/Junk), not {spec!r}")
    if not label.isprintable():  # a tab or line break in a label would split predict's output lines
        raise SpamtuneUsageError(f"a mail source's label is printable text on one line, not {label!r}")
    return MailSource(label, expand_user(path))


def iter_messages(path: str | Path, max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[tuple[str, bytes | Unreadable]]:
    """``(id, raw bytes)`` for every message under ``path``, in a stable order.

    ``path`` is a Maildir (``cur/`` then ``new/``, each by file name; ``tmp/`` holds unfinished
    deliveries and is skipped), a folder tree of message files (every regular file, by relative
    path; hidden names and symbolic links skipped; a Maildir in it read as one), an mbox file (a
    file starting with ``From ``) or a single message file. Ids are the file's path relative to
    ``path`` (its name for a single file), or for an mbox the message's number from 1 and its
    Message-ID (``"3 <id@host>"``). Each message is read up to ``max_bytes``: what the text
    needs, in bounded memory.

    One bad file does not end the read: a listed file that cannot be read (permissions, replaced
    by a folder meanwhile) comes as ``(id, Unreadable(reason))``, and a subfolder that cannot be
    listed is left out with a ``SpamtuneWarning`` naming it. ``path`` itself unreadable, or an
    mbox whose read fails midway (the messages after the failure cannot be told apart), raises.
    """
    path = Path(path)
    if path.is_dir():
        # Listed whole first: the ids and their order are those of the moment the read began.
        files = _maildir_files(path, "") if _is_maildir(path) else list(_tree_files(path))
        for relative, in_maildir in files:
            found = _read_listed(path, relative, max_bytes, in_maildir)
            if found is not None:
                yield found
        return
    if not path.exists():
        raise SpamtuneError(f"mail source not found: {path}")
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise SpamtuneError(f"cannot read {path}: {exc.strerror or exc}") from None
    with stream:
        try:
            if stream.peek(5)[:5] == b"From ":
                yield from iter_mbox(stream, max_bytes)
            else:
                yield path.name, stream.read(max_bytes)
        except OSError as exc:  # an I/O error midway: the messages read so far are already out
            raise SpamtuneError(f"cannot read {path}: {exc.strerror or exc}") from None


def _is_maildir(folder: Path) -> bool:
    return (folder / "cur").is_dir() or (folder / "new").is_dir()


def _maildir_files(box: Path, prefix: str) -> list[tuple[str, bool]]:
    """The message files of the Maildir ``box``, ``cur/`` then ``new/``, each by name (paths
    start with ``prefix``), marked as a Maildir's; ``tmp/`` holds unfinished deliveries."""
    # new/ is listed first: a message moved to cur/ between the two listings is then in both, and
    # read once (as cur/'s), rather than in neither.
    new = _sorted_names(box / "new")
    cur = _sorted_names(box / "cur")
    in_cur = {_maildir_unique(name) for name in cur}
    files = [f"cur/{name}" for name in cur] + [f"new/{name}" for name in new if _maildir_unique(name) not in in_cur]
    return [(prefix + relative, True) for relative in files]


def _read_listed(root: Path, relative: str, max_bytes: int, in_maildir: bool) -> tuple[str, bytes | Unreadable] | None:
    """A listed message file's ``(id, start)``; None when it is gone.

    A Maildir may be read while a mail client renames its messages: it moves one from ``new/`` to
    ``cur/`` once seen, and renames it in ``cur/`` whenever a flag changes (``X:2,S`` to
    ``X:2,RS``). The part of a name before ``:`` stays the same, and a message is found again by
    it, under the id of its new path (a renamed one was left out, with no line and no warning).
    A message deleted meanwhile is gone, and has no line."""
    for _ in range(_RENAMES_FOLLOWED):
        data = _read_start(root / relative, max_bytes)
        if data is not None:
            return relative, data
        if not in_maildir:
            return None
        folder, _, name = relative.rpartition("/")  # "cur/NAME", or "INBOX/cur/NAME" in a tree
        box = folder.rpartition("/")[0]
        renamed = _maildir_renamed(root / box, _maildir_unique(name))
        if renamed is None:
            return None
        relative = f"{box}/{renamed}" if box else renamed
    return None


# A message renamed again while it is looked for is looked for again, a few times.
_RENAMES_FOLLOWED = 3


def _maildir_unique(name: str) -> str:
    """The part of a Maildir file name that its flags (after ``:``) do not change."""
    return name.partition(":")[0]


def _maildir_renamed(box: Path, unique: str) -> str | None:
    """Where the message named ``unique`` is now (``cur/...`` or ``new/...``), or None."""
    for sub in ("cur", "new"):
        if (box / sub).is_symlink():  # not listed either (_sorted_names)
            continue
        try:
            with os.scandir(box / sub) as entries:
                for entry in entries:
                    if _maildir_unique(entry.name) == unique and entry.is_file(follow_symlinks=False):
                        return f"{sub}/{entry.name}"
        except OSError:  # listed once already; a folder gone now holds nothing to find
            continue
    return None


def _sorted_names(folder: Path) -> list[str]:
    # A link in place of cur/ or new/ leads anywhere, as a linked file would: skipped like one.
    if folder.is_symlink() or not folder.is_dir():
        return []
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file(follow_symlinks=False))
    except OSError as exc:
        _unlisted(exc, folder)
        return []


def _unlisted(exc: OSError, folder) -> None:
    warnings.warn(f"cannot list {folder}: {exc.strerror or exc}; its messages are left out", SpamtuneWarning, stacklevel=3)


def _tree_files(root: Path) -> Iterator[tuple[str, bool]]:
    """The message files under ``root`` by path, each marked whether it is a Maildir's.

    A folder of the tree that is a Maildir (a folder of Maildirs, as mbsync and offlineimap keep
    mail, or ``SubFolders Verbatim`` nesting) is read as one: its ``cur/`` and ``new/``, not its
    ``tmp/`` (unfinished deliveries) nor the files beside them (``dovecot-uidlist``, indexes),
    which were classified as messages. Such a folder has all three of ``cur/``, ``new/`` and
    ``tmp/``, as every Maildir writer makes them."""
    def unlisted(exc: OSError) -> None:
        if Path(exc.filename) == root:  # the source itself: nothing to read at all
            raise SpamtuneError(f"cannot read {root}: {exc.strerror or exc}") from None
        if not isinstance(exc, FileNotFoundError):  # one removed meanwhile held nothing to read
            _unlisted(exc, exc.filename)

    # os.walk does not follow links to folders, and without onerror skips an unlistable one in silence.
    for folder, dirs, files in os.walk(root, onerror=unlisted):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(folder).relative_to(root)
        if _MAILDIR_FOLDERS <= set(dirs):  # all three: a folder of hand-sorted files may have a new/
            dirs[:] = [d for d in dirs if d not in _MAILDIR_FOLDERS]  # Maildirs nested in it are walked on
            yield from _maildir_files(Path(folder), "" if base == Path(".") else f"{base.as_posix()}/")
            continue
        for name in sorted(files):
            full = Path(folder) / name
            if not name.startswith(".") and not full.is_symlink() and full.is_file():
                yield (base / name).as_posix(), False


_MAILDIR_FOLDERS = frozenset({"cur", "new", "tmp"})


# A listed message file is opened as it was listed, a regular file: a symbolic link put in its place
# since is not followed (it could lead anywhere, and prepare would copy what it reads into the
# training data), and a pipe is opened without waiting for a writer, which could wait forever.
_OPEN_LISTED = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _read_start(path: Path, max_bytes: int) -> bytes | Unreadable | None:
    """The first ``max_bytes`` of a listed file; None if it vanished meanwhile (a Maildir being
    read by a client), ``Unreadable`` if it cannot be read or is no longer a regular file (one
    such file must not end a mailbox's read)."""
    try:
        fd = os.open(path, _OPEN_LISTED)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW's answer for a link
            return Unreadable("a symbolic link now, not followed")
        return Unreadable(exc.strerror or str(exc))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            return Unreadable(os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            return Unreadable("not a regular file now (a device, pipe or socket)")
        with open(fd, "rb", closefd=False) as f:
            return f.read(max_bytes)
    except OSError as exc:
        return Unreadable(exc.strerror or str(exc))
    finally:
        os.close(fd)


_ESCAPED_FROM = re.compile(rb">+From ")


def iter_mbox(stream: BinaryIO, max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[tuple[str, bytes]]:
    """The messages of an mbox stream, ``(number and Message-ID, raw bytes)``.

    A message starts at a ``From `` line at the start of the file or after an empty line (its
    envelope line, dropped here); the empty line before it belongs to the separator. Lines
    ``>From ``, ``>>From `` ... lose one ``>`` (mboxrd quoting; in mboxo files this restores the
    ``From `` lines that were quoted). Only the first ``max_bytes`` of each message are kept;
    the rest is skipped line by line, so memory stays bounded whatever the message size.
    """
    number = 0
    body = bytearray()
    in_message = False
    kept_full = True
    previous_blank = True
    at_line_start = True
    while True:
        line = stream.readline(_READ_BLOCK)
        if not line:
            break
        starts_line = at_line_start
        at_line_start = line.endswith(b"\n")
        if starts_line and previous_blank and line.startswith(b"From "):
            if in_message:
                yield _mbox_item(number, body, kept_full)
            number += 1
            body = bytearray()
            in_message, kept_full = True, True
            previous_blank = False
            continue
        if starts_line:
            previous_blank = line in (b"\n", b"\r\n")
            if _ESCAPED_FROM.match(line):
                line = line[1:]
        if in_message and kept_full:
            if len(body) + len(line) <= max_bytes:
                body += line
            else:
                body += line[: max_bytes - len(body)]
                kept_full = False
    if in_message:
        yield _mbox_item(number, body, kept_full)


def _mbox_item(number: int, body: bytearray, kept_full: bool) -> tuple[str, bytes]:
    data = bytes(body)
    if kept_full:  # the empty line written before the next envelope line
        if data.endswith(b"\r\n\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n\n"):
            data = data[:-1]
    message_id = header_value(data, "message-id")
    return (f"{number} {message_id}" if message_id else str(number)), data
