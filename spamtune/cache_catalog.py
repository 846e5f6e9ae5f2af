"""The kept prefix caches under a data root, as ``spamtune cache ls|rm`` shows and frees them.

Each entry's status is read from its folder without hashing anything: ``meta.json`` (written
last, when the entry is complete), the sizes it gives, and whether a process still holds the
folder's write lock (``folder_lock``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spamtune import paths
from spamtune.cache_entry import CACHE_FORMAT, META_KIND, CacheCorrupt, CacheMissing, files_out_of_shape, folder_bytes
from spamtune.cache_entry import interrupted_build, is_entry_name, read_meta, remove_folder
from spamtune.errors import SpamtuneError
from spamtune.folder_lock import unclaimed

# An entry's status in ``spamtune cache ls``.
OK = "ok"
STALE = "stale"  # of an older format: no run reads it
DAMAGED = "damaged"  # complete once, its files no longer match meta.json: the next run rebuilds it
INCOMPLETE = "incomplete"  # no meta.json yet, and a live process is writing it
ABANDONED = "abandoned"  # no meta.json, and no process writes it: a killed or crashed run left it
INTERRUPTED = "interrupted"  # a build stopped by Ctrl-C left what it wrote: the next run on the same data resumes it
# What ``cache rm --stale`` removes: the entries no run will read or finish.
SWEPT = (STALE, DAMAGED, ABANDONED)


@dataclass(frozen=True)
class CacheEntry:
    """One folder of the store, as ``spamtune cache ls`` shows it."""

    name: str
    path: Path
    nbytes: int
    meta: dict | None
    status: str  # OK, STALE, DAMAGED, INCOMPLETE, ABANDONED or INTERRUPTED


@dataclass(frozen=True)
class Removal:
    """What ``remove_caches`` did."""

    removed: list[CacheEntry]
    freed: int  # bytes: of the folders removed, and of the files removed from those that stayed
    failed: list[tuple[CacheEntry, OSError]]
    busy: list[CacheEntry] = field(default_factory=list)  # kept: a running process writes them

    def error(self) -> SpamtuneError | None:
        """The one line saying which folder could not be removed (and how many more), if any."""
        reasons = [(entry, exc.strerror or str(exc)) for entry, exc in self.failed]
        reasons += [(entry, "a running process is writing it; remove it once that run ends") for entry in self.busy]
        if not reasons:
            return None
        entry, reason = reasons[0]
        more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
        return SpamtuneError(f"cannot remove {entry.path}: {reason}{more}")


def _cache_folder(data_root: Path) -> Path:
    """``<data root>/cache``; one that is a file is an error, not an empty store (a data root that
    is a file is refused by ``paths.data_root``)."""
    root = paths.cache_dir(data_root)
    if root.exists() and not root.is_dir():
        raise SpamtuneError(f"{root} is not a folder: spamtune keeps its prefix caches there")
    return root


def _read_entry(path: Path, nobody_writes: bool | None = None) -> CacheEntry:
    """The entry in ``path``, with its status. ``nobody_writes``: whether no process writes it, when
    the caller holds its lock already; else the lock is tried. Raises ``OSError`` when the
    folder went meanwhile."""
    meta, status = None, OK
    try:
        data = read_meta(path)
        # A meta.json that parses but is not an entry's (no key object) describes nothing: shown
        # as damaged with no fields, rather than its values passed on to `ls` as if they were.
        meta = data if isinstance(data, dict) and data.get("kind") == META_KIND and isinstance(data.get("key"), dict) else None
        if meta is None:
            status = DAMAGED
        elif meta.get("key", {}).get("format") != CACHE_FORMAT:
            status = STALE
        elif files_out_of_shape(path, int(meta["states_bytes"])) is not None:  # load's size checks, no hashing
            status = DAMAGED
    except CacheMissing:  # meta.json is written last: incomplete, or never to be completed
        if nobody_writes is None:
            with unclaimed(path) as free:
                nobody_writes = free
        # Interrupted only where the next build can take over what it left: a ledger whose states
        # were cut short or removed resumes nothing, and `rm --stale` is to remove it.
        status = (INTERRUPTED if interrupted_build(path) is not None else ABANDONED) if nobody_writes else INCOMPLETE
    except (CacheCorrupt, OSError, ValueError, AttributeError, KeyError, TypeError):  # written atomically, so unreadable means damaged
        meta, status = None, DAMAGED
    return CacheEntry(path.name, path, folder_bytes(path), meta, status)


def list_caches(data_root: str | Path) -> list[CacheEntry]:
    """Every entry folder under ``<data root>/cache``, oldest first, with its size on disk."""
    root = _cache_folder(Path(data_root))
    if not root.is_dir():
        return []
    entries = []
    for path in root.iterdir():
        if path.is_symlink() or not path.is_dir() or not is_entry_name(path.name):
            continue
        try:
            entries.append(_read_entry(path))
        except OSError:  # removed meanwhile
            continue
    return sorted(entries, key=lambda e: (meta_field(e.meta, "created", str) or "", e.name))


def meta_field(mapping: dict | None, name: str, kind: type):
    """``mapping[name]`` when it is of the type ``ls`` documents for it, else None: a hand-edited
    or damaged meta.json must not put another type in a field scripts read, or stop the listing."""
    value = (mapping or {}).get(name)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _sweep(entry: CacheEntry) -> bool:
    """Remove an entry that no run will read or finish, under its exclusive lock, checking its
    status again there: a run may have started writing it, or completed it, since it was listed.
    A stale entry needs no lock: no run writes an entry of an older format."""
    if entry.status == STALE:
        remove_folder(entry.path)
        return True
    with unclaimed(entry.path) as free:
        if not free:
            return False
        try:
            now = _read_entry(entry.path, nobody_writes=True)
        except OSError:  # removed meanwhile
            return False
        if now.status not in SWEPT:
            return False
        remove_folder(entry.path)
        return True


def _remove_unless_written(entry: CacheEntry) -> bool:
    """Remove an entry the user named (or all of them) unless a running process is writing it:
    that run would fail when it finished the entry. Under the entry's lock, so none starts to."""
    with unclaimed(entry.path, when_unknown=True) as free:
        if free:
            remove_folder(entry.path)
        return free


def _bytes_left(entry: CacheEntry) -> int:
    """What is still on the disk of an entry that could not be wholly removed; all of it when
    there is no telling (an unreadable folder)."""
    try:
        return folder_bytes(entry.path) if entry.path.is_dir() else 0
    except OSError:
        return entry.nbytes


def remove_caches(data_root: str | Path, names: Iterable[str] = (), *, everything: bool = False, stale: bool = False) -> Removal:
    """Remove the entries named (a unique prefix of the name is enough), all of them, or the
    ``stale`` ones: those no run will read or finish (``SWEPT``). An entry a live process is
    writing is kept, even when named (it is in ``busy``). An entry that cannot be removed does
    not stop the others: it is in ``failed``, and what was removed of it counts in ``freed``."""
    entries = list_caches(data_root)
    if everything:
        chosen = entries
    elif stale:
        chosen = [e for e in entries if e.status in SWEPT]
    else:
        folder = paths.cache_dir(Path(data_root))
        chosen = paths.select_by_prefix(entries, names, lambda e: e.name, "prefix cache", folder, "spamtune cache ls")
    removed, freed, failed, busy = [], 0, [], []
    for entry in chosen:
        try:
            if stale:
                if not _sweep(entry):
                    continue
            elif not _remove_unless_written(entry):
                busy.append(entry)
                continue
        except OSError as exc:
            failed.append((entry, exc))
            freed += max(0, entry.nbytes - _bytes_left(entry))
            continue
        removed.append(entry)
        freed += entry.nbytes
    return Removal(removed, freed, failed, busy)
