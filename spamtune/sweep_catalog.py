"""The sweeps under a data root, as ``spamtune sweeps`` shows them: each one's status, how many
of its runs finished, and its best run; and one sweep's ranked runs again, after the sweep's own
table has scrolled away.

Everything comes from each sweep folder's ``sweep.json`` (rewritten after every run) and its
lock, without importing torch. ``sweep.json`` is a file anyone can edit: a row that is not what
a sweep writes is left out of the figures rather than failing the listing, and a file that is
not a sweep's at all makes that sweep ``damaged``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from spamtune import paths
from spamtune.errors import SpamtuneError
from spamtune.fsutil import read_json
from spamtune.run_catalog import check_removable as check_run_removable
from spamtune.run_catalog import is_in_use, size_and_mtime
from spamtune.sweep import SWEEP_FILE, SWEEP_FORMAT, SweepResult, sweeps_dir

RUNNING, FINISHED, INTERRUPTED, DAMAGED = "running", "finished", "interrupted", "damaged"
# What a row of sweep.json may say of its run; "interrupted" and "pending" are runs still to go.
_ROW_STATUSES = ("done", "failed", "interrupted", "pending")
_ROW_FIGURES = ("validation_accuracy", "validation_loss", "test_accuracy", "test_loss", "wall_time_s")


@dataclass(frozen=True)
class SweepInfo:
    """One sweep folder, summarised; the ``best_*`` figures are its best run's (lowest
    validation loss), None until a run finished."""

    name: str
    path: str
    # running: a process holds the sweep's lock; finished: no run left to go (each one done or
    # failed); interrupted: runs left, which the same sweep command runs; damaged: no sweep.json
    # a sweep wrote.
    status: str
    runs: int
    done: int
    failed: int
    swept: list[str]  # the options given as comma lists
    best: str | None  # the best run's folder name
    best_path: str | None
    best_validation_loss: float | None
    best_validation_accuracy: float | None
    best_test_accuracy: float | None
    size_bytes: int
    modified: str  # ISO 8601, UTC: when the sweep or one of its runs last wrote a file
    age_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:  # a hand-written integer too large for a float (10**400) is no figure either
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _plain_value(value) -> bool:
    """An option's value as a sweep writes one: a string, a number, a flag or none. Python's
    json reads NaN and Infinity, which ``sweeps show --json`` would then write, and no JSON
    reader takes; a list or object would show as Python's repr in the TSV."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


def _clean_row(row, folder: Path) -> dict | None:
    """A row of sweep.json as the sweep wrote it, its figures finite numbers or None; None for
    what is not a row at all. A run is named by its folder beside sweep.json (where it is, for
    a folder moved since), never by a path the file claims."""
    if not isinstance(row, dict) or not isinstance(row.get("name"), str) or row.get("status") not in _ROW_STATUSES:
        return None
    name = row["name"]
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        return None
    overrides = row.get("overrides")
    error = row.get("error")
    return {
        "name": name,
        "run": str(folder / name),
        "overrides": {str(k): v for k, v in overrides.items() if _plain_value(v)} if isinstance(overrides, dict) else {},
        "status": row["status"],
        "skipped": row.get("skipped") is True,
        **{figure: _number(row.get(figure)) for figure in _ROW_FIGURES},
        "error": error if isinstance(error, str) else None,
    }


def read_sweep(folder: Path) -> SweepResult:
    """The runs recorded in ``folder``'s sweep.json, ranked as the sweep ranks them; one error
    naming the file where it is missing or is not a sweep's."""
    path = Path(folder) / SWEEP_FILE
    record = read_json(path, "sweep file")
    if not isinstance(record, dict) or record.get("format") != SWEEP_FORMAT or not isinstance(record.get("runs"), list):
        raise SpamtuneError(f"{path} is not a spamtune sweep file (format {SWEEP_FORMAT})")
    rows = [row for row in (_clean_row(row, Path(folder)) for row in record["runs"]) if row is not None]
    # A done run the table cannot rank (its figures edited away) counts as neither done nor best.
    rows = [row for row in rows if row["status"] != "done" or None not in (row["validation_loss"], row["validation_accuracy"])]
    return SweepResult(Path(folder), rows)


def describe_sweep(folder: Path, now: float | None = None) -> SweepInfo:
    try:
        result = read_sweep(folder)
    except SpamtuneError:
        result = None
    return sweep_info(folder, result, now)


def sweep_info(folder: Path, result: SweepResult | None, now: float | None = None) -> SweepInfo:
    """``folder``'s listing from its sweep.json as ``read_sweep`` gave it (None: damaged)."""
    size, mtime = size_and_mtime(folder)
    rows = result.rows if result is not None else []
    counts = {status: sum(row["status"] == status for row in rows) for status in _ROW_STATUSES}
    if is_in_use(folder):
        status = RUNNING
    elif result is None:
        status = DAMAGED
    else:
        status = INTERRUPTED if counts["interrupted"] or counts["pending"] else FINISHED
    best = result.best if result is not None else None
    return SweepInfo(
        name=folder.name,
        path=str(folder),
        status=status,
        runs=len(rows),
        done=counts["done"],
        failed=counts["failed"],
        swept=list(dict.fromkeys(name for row in rows for name in row["overrides"])),
        best=best["name"] if best else None,
        best_path=best["run"] if best else None,
        best_validation_loss=best["validation_loss"] if best else None,
        best_validation_accuracy=best["validation_accuracy"] if best else None,
        best_test_accuracy=best["test_accuracy"] if best else None,
        size_bytes=size,
        modified=datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds"),
        age_seconds=round(max(0.0, (now if now is not None else datetime.now(timezone.utc).timestamp()) - mtime), 1),
    )


def sweep_folders(root: Path) -> list[Path]:
    """The folders under ``<root>/sweeps`` that a sweep made (they hold its sweep.json or its
    lock); a symbolic link there is not one (a sweep never makes one, nor follows one), nor is
    a hidden folder: ``sweeps rm`` renames a sweep to one before deleting it, and one cut short
    (Ctrl-C, a file it could not delete) still holds the sweep.json."""
    folder = sweeps_dir(root)
    if not folder.is_dir():
        return []
    from spamtune.runs import LOCK_FILE

    found = []
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
            continue
        if (entry / SWEEP_FILE).exists() or (entry / LOCK_FILE).exists():
            found.append(entry)
    return found


def list_sweeps(root: Path) -> list[SweepInfo]:
    """Every sweep kept under the data root, the most recently active first."""
    now = datetime.now(timezone.utc).timestamp()
    infos = []
    for folder in sweep_folders(root):
        try:
            infos.append(describe_sweep(folder, now))
        except FileNotFoundError:  # removed while listed
            continue
    return sorted(infos, key=lambda info: (info.modified, info.name), reverse=True)


def find_sweep(sweep: str | None, root: Path) -> Path:
    """The sweep folder named on the command line: a name under ``<root>/sweeps`` (or a unique
    start of one, ``sweep-`` left out or not), a folder's path, or its sweep.json's; with none,
    the most recently active."""
    if sweep is None:
        infos = list_sweeps(root)
        if not infos:
            raise SpamtuneError(f"no sweeps in {sweeps_dir(root)}; `spamtune sweep` makes one, or {paths.ELSEWHERE}")
        return Path(infos[0].path)
    if sweep == "":
        raise SpamtuneError("an empty sweep name: name a sweep (`spamtune sweeps` lists them)")
    if "/" in sweep or sweep.startswith("~") or sweep in (".", ".."):
        folder = paths.absolute(sweep)
        if folder.name == SWEEP_FILE and not folder.is_dir():
            folder = folder.parent
        if not (folder / SWEEP_FILE).is_file():
            raise SpamtuneError(f"{folder} is not a sweep folder (it holds no {SWEEP_FILE})")
        return folder
    names = [folder.name for folder in sweep_folders(root)]
    # A default folder's name is sweep-<hash>: the hash alone (or its start) names it too.
    matches = [name for name in names if sweep in (name, name.removeprefix("sweep-"))] or [
        name for name in names if name.startswith(sweep) or name.removeprefix("sweep-").startswith(sweep)
    ]
    if len(matches) > 1:
        raise SpamtuneError(f"'{sweep}' names {len(matches)} sweeps ({', '.join(sorted(matches)[:5])}); give more of the name")
    if not matches:
        raise SpamtuneError(f"no sweep named '{sweep}' in {sweeps_dir(root)}; `spamtune sweeps` lists them, or {paths.ELSEWHERE}")
    return sweeps_dir(root) / matches[0]


def check_removable(folder: Path, root: Path) -> None:
    """Refuse a folder that holds anything but a sweep's: its sweep.json, hidden files (its lock,
    temporaries) and run folders. ``sweeps rm`` deletes the whole folder, and an ``--out``
    folder given by path may be anyone's: outside ``<root>/sweeps`` each run folder must hold
    nothing but what a run holds, as ``runs rm`` asks of a run given by path (one file a run
    writes, a ``config.json``, is in any Hugging Face model folder too). A symbolic link is only
    unlinked, so it is not checked."""
    from spamtune.sweep import started_run

    if folder.is_symlink():
        return
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:
        raise SpamtuneError(f"cannot read {folder}: {exc.strerror or exc}") from None
    if SWEEP_FILE not in entries:
        raise SpamtuneError(f"{folder} is not a sweep folder (it holds no {SWEEP_FILE})")
    foreign = [
        name for name in entries
        if not name.startswith(".") and name != SWEEP_FILE and ((folder / name).is_symlink() or not started_run(folder / name))
    ]  # fmt: skip
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise SpamtuneError(f"{folder} holds {shown}, which is not a run of the sweep, so it is not removed; delete it by hand if it really is to go")
    if os.path.realpath(folder.parent) != os.path.realpath(sweeps_dir(root)):
        for name in entries:
            if not name.startswith(".") and name != SWEEP_FILE:
                check_run_removable(folder / name, root)


def remove_sweep(folder: Path, root: Path) -> None:
    """Delete a sweep folder and its runs. Refused while a sweep runs in it or a process trains
    one of its runs (a ``finetune --resume`` of it); both are held, as the sweep and training hold
    them, until the folder is renamed to a hidden name (atomic), so that nothing starts in it
    meanwhile and no half-removed sweep is ever listed. A symbolic link (a path given to a
    sweep kept elsewhere) is removed, never what it points to, as ``runs rm`` removes one: its
    runs were locked and its folder renamed through the link, which left the link renamed to a
    hidden name, the sweep in place and lock files in its finished runs."""
    import secrets
    import shutil
    from contextlib import ExitStack

    from spamtune import runs

    if folder.is_symlink():
        try:
            folder.unlink()
        except OSError as exc:
            raise SpamtuneError(f"cannot remove {folder}: {exc.strerror or exc}") from None
        return
    check_removable(folder, root)
    unlocked = []  # finished runs, which have no lock file and must be left with none
    with ExitStack() as held:
        try:
            held.callback(runs.hold_folder(folder, lambda f: SpamtuneError(f"{f} is in use: a sweep is running in it; stop it first"), "the sweep folder").release)
            for run_dir in sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir()):
                had_lock_file = (run_dir / runs.LOCK_FILE).exists()
                try:
                    held.callback(runs.lock_run_dir(run_dir).release)
                except runs.RunInUse:
                    raise SpamtuneError(f"{run_dir} is in use: a process is training in it; stop that first") from None
                if not had_lock_file:
                    unlocked.append(run_dir)
            doomed = folder.with_name(f".{folder.name}.removing-{secrets.token_hex(4)}")
            try:
                os.rename(folder, doomed)
            except OSError as exc:
                raise SpamtuneError(f"cannot remove {folder}: {exc.strerror or exc}") from None
        except FileNotFoundError:
            raise SpamtuneError(f"{folder} was removed meanwhile") from None
        except BaseException:
            for run_dir in unlocked:  # still held: nothing can have started in them
                runs.release_finished(run_dir)
            raise
    shutil.rmtree(doomed, ignore_errors=True)
    if doomed.exists():
        raise SpamtuneError(f"{folder} was moved to {doomed} but could not be deleted completely; remove it by hand")
