"""A kept prefix cache's entry folder on disk: its files, its format number, and what can be
learned about it without reading the states.

An entry is a folder under ``<data root>/cache`` named by its key's hash, holding the states
(``states.bin``), their index, ``verified.json`` and, written last, ``meta.json``. This module
knows the layout and nothing of tensors, so that ``spamtune cache ls`` and ``cache rm`` answer
without importing PyTorch (several seconds on a cold start); ``cache_store`` writes and reads
entries, ``cache_catalog`` lists and removes them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from spamtune.errors import SpamtuneError
from spamtune.fsutil import read_json

# Bump when the stored layout or the meaning of the states changes: old entries then stop
# matching any key (``spamtune cache ls`` shows them as stale). 2: each batch built on one
# OpenMP thread and the test split batched apart on any thread count; format 1's states
# depended, to float rounding, on the thread count of the run that built them.
CACHE_FORMAT = 2
STATES_FILE = "states.bin"
INDEX_FILE = "index.safetensors"
META_FILE = "meta.json"
# The states file's signature once its hash matched (``spamtune.verified``): hashing the recipe's
# 122 MiB cache took 0.13 s of every run that reuses it.
VERIFIED_FILE = "verified.json"
# What a build stopped by Ctrl-C leaves for the next one to resume: the states written so far,
# and which batches wrote them (``cache_store``).
PARTIAL_STATES_FILE = "states.partial"
PROGRESS_FILE = "progress.json"
PROGRESS_KIND = "spamtune-prefix-cache-progress"
META_KIND = "spamtune-prefix-cache"
NAME_LENGTH = 20  # hex digits of the key's sha256 naming an entry: 80 bits


def is_entry_name(name: str) -> bool:
    """Whether a folder under the cache root is named as an entry is: ``NAME_LENGTH`` lowercase
    hex digits. Any other folder there (someone's notes, a file system's ``lost+found``) is no
    cache: ``spamtune cache ls`` does not list it, nor ``cache rm`` remove it."""
    return len(name) == NAME_LENGTH and all(c in "0123456789abcdef" for c in name)


class CacheMissing(Exception):
    pass


class CacheCorrupt(Exception):
    """An entry whose files do not match its meta.json: removed and rebuilt by ``obtain``."""


def read_meta(entry: Path):
    """The JSON value in an entry's ``meta.json``. Raises ``CacheMissing`` where there is none
    (the entry is incomplete) and ``CacheCorrupt`` where something else stands in its place: a
    folder, a link, or a pipe, which a plain read would wait on forever."""
    path = entry / META_FILE
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise CacheCorrupt(f"{path} is not a file")
        return read_json(path, "cache description")
    except FileNotFoundError:
        raise CacheMissing(entry.name) from None
    except OSError as exc:
        raise CacheCorrupt(f"{path} is unreadable ({exc.strerror or exc})") from None
    except SpamtuneError as exc:
        if not os.path.lexists(path):  # removed meanwhile: a run has started to write the entry again
            raise CacheMissing(entry.name) from None
        raise CacheCorrupt(str(exc)) from None


def interrupted_build(entry: Path) -> dict | None:
    """The ledger (``PROGRESS_FILE``) that a build stopped by Ctrl-C left in ``entry``, where a next
    build could take it over: a regular file describing the batches written, beside a regular
    ``PARTIAL_STATES_FILE`` of the size it gives; else None. Only sizes are checked, nothing
    hashed. ``spamtune cache ls`` shows an entry as interrupted on this, and the build resumes on
    it (when its key is the build's): a ledger whose states are gone or cut short, or one that
    cannot be read, resumes nothing and is the leftover of an abandoned build."""
    ledger, partial = entry / PROGRESS_FILE, entry / PARTIAL_STATES_FILE
    try:
        if not stat.S_ISREG(os.lstat(ledger).st_mode):  # a pipe planted there would make the read wait forever
            return None
        record = json.loads(ledger.read_text(encoding="utf-8"))
        if (
            isinstance(record, dict) and record.get("kind") == PROGRESS_KIND and isinstance(record.get("key"), dict)
            and isinstance(record.get("states_bytes"), int) and isinstance(record.get("plan"), str)
            and isinstance(record.get("written"), list) and all(isinstance(name, str) for name in record["written"])
            and stat.S_ISREG(os.lstat(partial).st_mode) and os.lstat(partial).st_size == record["states_bytes"]
        ):  # fmt: skip
            return record
    except (OSError, ValueError):  # none, or unreadable: nothing to resume
        pass
    return None


def folder_bytes(path: Path) -> int:
    total = 0
    for child in path.iterdir():
        if child.is_file() and not child.is_symlink():
            total += child.stat().st_size
    return total


def files_out_of_shape(entry: Path, nbytes: int) -> str | None:
    """What the sizes alone say is wrong with an entry's files: one missing (or a link planted
    in its place), or states of another size than the ``nbytes`` its ``meta.json`` gives; None
    when nothing is. No file is read."""
    states_path, index_path = entry / STATES_FILE, entry / INDEX_FILE
    for path in (states_path, index_path):
        if path.is_symlink() or not path.is_file():
            return f"{path} is missing"
    size = states_path.stat().st_size
    return None if size == nbytes else f"{states_path} has {size:,} bytes, expected {nbytes:,}"


def remove_folder(path: Path) -> None:
    """Remove an entry folder; a symlink planted in its place is unlinked, never followed.
    Raises ``OSError`` when something in it cannot be removed."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        try:
            shutil.rmtree(path)
        except FileNotFoundError:  # a file in it went meanwhile (a writer's temporary renamed)
            if path.exists():
                shutil.rmtree(path)
