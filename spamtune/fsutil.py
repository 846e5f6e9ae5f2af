"""Writing files so that a crash, a full disk or Ctrl-C never leaves a half-written one.

Everything is written to a temporary file in the destination's folder and renamed over the
final name only once complete; a rename within one file system is atomic. The final file gets
the permissions a plain ``open(final, "w")`` would give it: those of the file it replaces, else
``0o666`` less the umask (not the ``0o600`` of ``tempfile.mkstemp``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from spamtune.errors import DiskFull, SpamtuneError


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it replaces ``final``, on error it is removed."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp_path, mode = _create_temporary(final)
    except OSError as exc:
        raise write_error(final, exc) from None
    try:
        yield tmp_path
        # Again now: some writers (safetensors' save_file) replace the file at tmp_path with
        # their own private 0o600 temporary rather than write into it.
        if stat.S_IMODE(os.stat(tmp_path).st_mode) != mode:
            os.chmod(tmp_path, mode)
        os.replace(tmp_path, final)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise write_error(final, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_error(final: Path, exc: OSError) -> SpamtuneError:
    """The one-line error for a failed write; a full disk (or quota) is its own kind, so that
    callers can say what survived and how to go on."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(final)
    return SpamtuneError(f"cannot write {final}: {exc.strerror or exc}")


# How many random names to try before giving up (mkstemp tries as many).
TEMPORARY_SUFFIX = ".part"
_TEMP_ATTEMPTS = 10_000


def _create_temporary(final: Path) -> tuple[Path, int]:
    """Create a new, empty ``.<name>.<random>.part`` beside ``final``; return it and the
    permission bits the final file is to have.

    Created with ``O_EXCL`` and mode ``0o666``, so the kernel applies the umask exactly as for any
    new file, and that is the final mode; if ``final`` exists, its permission bits are kept
    instead, as rewriting it in place would keep them.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_ATTEMPTS):
        tmp = final.parent / f".{final.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        try:
            try:
                return tmp, stat.S_IMODE(os.stat(final).st_mode)
            except FileNotFoundError:  # nothing to replace: 0o666 less the umask, as just created
                return tmp, stat.S_IMODE(os.stat(tmp).st_mode)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
    raise FileExistsError(f"no free temporary name beside {final}")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries a killed writer left in ``folder`` (``.<name>.<random>.part``).
    Only for a folder no live process writes to, e.g. a run folder under its lock."""
    removed = []
    for path in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_bytes(final: str | Path, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_text(final: str | Path, text: str) -> Path:
    return atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: str | Path, obj) -> Path:
    return atomic_write_text(final, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path, what: str = "file") -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpamtuneError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise SpamtuneError(f"cannot read {what} {path}: {exc}") from None
