"""Writing files so that a crash, a full disk or Ctrl-C never leaves a half-written one.

Everything is written to a temporary file in the destination's folder and renamed over the
final name only once complete; a rename within one file system is atomic.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from spamtune.errors import SpamtuneError


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it replaces ``final``, on error it is removed."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    except OSError as exc:
        raise SpamtuneError(f"cannot write {final}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise SpamtuneError(f"cannot write {final}: {exc.strerror or exc}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


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
