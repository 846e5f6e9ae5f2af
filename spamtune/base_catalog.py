"""The bases a data root stores (``spamtune bases ls|rm``), and the runs there that use each.

Every compact run names its base by sha256 and every run on the same base shares the one file
under ``<data root>/bases``: 0.5 GB for gpt2-small, 6 GB for gpt2-xl, and one per seed for
random inits. A removed base is not lost to the runs on it: loading one rebuilds the base from
its origin (the seed, or the downloaded GPT-2 weights) when that gives the same hash, and
otherwise says in one line how to get it back. Only the runs under this data root (``runs/``
and ``sweeps/``) are counted as users; a compact run kept elsewhere may name these bases too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spamtune import paths
from spamtune.base_ref import BaseRef, folder_in_the_way, is_sha256, recorded_origin
from spamtune.errors import SpamtuneError
from spamtune.run_catalog import base_users


@dataclass(frozen=True)
class StoredBase:
    sha256: str
    path: Path
    nbytes: int
    origin: dict  # from the file's metadata; empty when the file cannot be read
    users: list[Path] = field(default_factory=list)  # run folders here whose base.json names it

    def describe(self) -> str:
        return BaseRef(self.sha256, self.origin).describe() if self.origin else "unreadable file"


def list_bases(root: str | Path) -> list[StoredBase]:
    """The bases stored under ``root``, oldest first, each with the runs here that use it."""
    root = Path(root)
    folder = paths.bases_dir(root)
    if not folder.is_dir():
        return []
    users = base_users(root)
    found = []
    for path in folder.glob("*.safetensors"):
        sha = path.stem
        if not is_sha256(sha) or path.is_symlink() or not path.is_file():  # another name is no base spamtune stored
            continue
        try:
            stat = path.stat()
        except OSError:  # removed meanwhile
            continue
        found.append((stat.st_mtime, StoredBase(sha, path, stat.st_size, recorded_origin(path), users.get(sha, []))))
    return [base for _, base in sorted(found, key=lambda item: (item[0], item[1].sha256))]


def folders_in_the_way(root: str | Path) -> list[Path]:
    """Folders under ``root``'s bases named as a base's file: no base can be stored there."""
    folder = paths.bases_dir(Path(root))
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob("*.safetensors") if is_sha256(path.stem) and folder_in_the_way(path))


class BasesNotRemoved(SpamtuneError):
    """Some of the bases asked for could not be removed: the line names the first; ``removed``
    holds those that were, for the caller to report as it would without the failure."""

    def __init__(self, failed: list[tuple[StoredBase, OSError]], removed: list[StoredBase]):
        base, exc = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        super().__init__(f"cannot remove {base.path}: {exc.strerror or exc}{more}")
        self.removed = removed


def remove_bases(root: str | Path, names: Iterable[str] = (), *, everything: bool = False, unused: bool = False) -> list[StoredBase]:
    """Remove the bases named by a unique prefix of their sha256, all of them, or those no run
    here uses. Returns what was removed; ``BasesNotRemoved`` once the others are removed, when
    a file could not be."""
    root = Path(root)
    stored = list_bases(root)
    if everything:
        chosen = stored
    elif unused:
        chosen = [base for base in stored if not base.users]
    else:
        # A sha256 is hexadecimal: a prefix copied in capitals names the same base.
        chosen = paths.select_by_prefix(stored, [n.lower() for n in names], lambda b: b.sha256, "base", paths.bases_dir(root), "spamtune bases ls")
    removed, failed = [], []
    for base in chosen:  # one that cannot be removed does not keep the others
        try:
            base.path.unlink(missing_ok=True)
        except OSError as exc:
            failed.append((base, exc))
            continue
        removed.append(base)
    if failed:
        raise BasesNotRemoved(failed, removed)
    return removed

