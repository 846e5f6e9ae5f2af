"""Files hashed once, then known by what the file system says of them.

Large files spamtune wrote itself (stored bases, kept prefix caches) are checked against their
sha256 before use, so a damaged or substituted file is an error rather than a silently
different classifier. Hashing them each time is most of what a short command waits for
(0.4 s for the 0.5 GB gpt2-small base, 0.13 s for the recipe's prefix cache), so a small JSON
index beside them remembers, for each file whose hash matched, its device, inode, size and
modification and change times. A file rewritten, replaced or touched since has a new change
time, which no program can set back, and is hashed again.

A file spamtune has just written and hashed itself goes into the index at once: the first run
that stores a base and builds a cache leaves nothing for the second run to hash again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from spamtune.errors import SpamtuneError
from spamtune.fsutil import atomic_write_json, read_json

# File times move in clock ticks of a few milliseconds: a change within the tick of the
# signature could keep it. A file left alone for a while cannot be changed in that tick.
SETTLED_NS = 2_000_000_000


def read_index(path: Path, what: str) -> dict:
    """A small JSON index; empty when missing or damaged, since losing one only costs work
    done again (hashing a file, drawing a base)."""
    try:
        known = read_json(path, what) if path.is_file() else {}
    except SpamtuneError:
        return {}
    return known if isinstance(known, dict) else {}


def file_signature(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class VerifiedFiles:
    """The index at ``index_path``: file signatures by the key a caller checks them under
    (a sha256, or a cache entry's name and sha256)."""

    def __init__(self, index_path: Path):
        self.index_path = index_path

    def known(self, key: str, signature: list[int]) -> bool:
        """Whether the file with ``signature`` matched its hash under ``key`` and is untouched since."""
        return read_index(self.index_path, f"index {self.index_path.name}").get(key) == signature

    def remember(self, key: str, signature: list[int]) -> None:
        """Record that the file with ``signature`` matched its hash under ``key``; not for a file
        changed within ``SETTLED_NS``, and nothing at all where the index cannot be written
        (the next check hashes again)."""
        if time.time_ns() - signature[4] < SETTLED_NS:
            return
        self._record(key, signature)

    def remember_written(self, key: str, path: Path) -> None:
        """Record the file at ``path`` that this process has just renamed into place, with the
        sha256 ``key`` of the bytes it wrote there, without waiting for it to settle. Such a
        file is a new inode, made under a temporary name: the signature could only miss a change
        that another program made to it, in place, within a clock tick of its rename."""
        try:
            signature = file_signature(path)
        except OSError:
            return
        self._record(key, signature)

    def _record(self, key: str, signature: list[int]) -> None:
        known = read_index(self.index_path, f"index {self.index_path.name}")
        if known.get(key) != signature:
            try:
                atomic_write_json(self.index_path, {**known, key: signature})
            except SpamtuneError:
                pass
