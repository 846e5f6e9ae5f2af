"""The runs under a data root, as ``spamtune runs`` shows them: status, model, accuracy, size, age.

Everything is read from the run folders' small files (``summary.json``, ``hparams.json``,
``metrics.jsonl``, the resume checkpoint's presence) without importing torch, so listing
hundreds of runs takes milliseconds. Removing a run first renames it out of sight, so an
interrupted removal never leaves a half-deleted folder that still looks like a run.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from spamtune import paths, runs
from spamtune.errors import SpamtuneError
from spamtune.fsutil import read_json, read_small_file
from spamtune.shell import shell_word
from spamtune.sweep import sweeps_dir

RUNNING, FINISHED, INTERRUPTED, FAILED = "running", "finished", "interrupted", "failed"
# metrics.jsonl holds a ~250-byte line per evaluation: this is a million of them.
MAX_METRICS_BYTES = 256 << 20


@dataclass(frozen=True)
class RunInfo:
    """One run folder, summarised. Field names follow ``summary.json`` where they overlap."""

    name: str
    path: str
    # running: a process holds the run's lock; finished: summary.json written; interrupted: a
    # resume checkpoint is there (stopped by Ctrl-C, a kill or an error); failed: training
    # started and left neither.
    status: str
    model: str | None
    trainable: str | None
    weights: str | None
    validation_accuracy: float | None
    test_accuracy: float | None
    size_bytes: int
    modified: str  # ISO 8601, UTC: when the run last wrote a file
    age_seconds: float
    resume_command: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def _read_json(path: Path) -> dict | None:
    """A run's JSON file, or None when it is missing or unreadable (a listing never fails on one run).
    NaN and infinities, which Python's JSON reader takes but no other does, come back as None:
    ``runs --json`` and ``runs show --json`` pass these values on, and must stay valid JSON."""
    try:
        data = read_json(path)  # a pipe or /dev/zero in a run's place neither blocks nor fills the memory
    except SpamtuneError:
        return None
    return _finite_numbers(data) if isinstance(data, dict) else None


def _finite_numbers(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_numbers(item) for item in value]
    return value


def read_summary(run_dir: Path) -> dict | None:
    return _read_json(run_dir / runs.SUMMARY_FILE)


def read_hparams(run_dir: Path) -> dict | None:
    return _read_json(run_dir / runs.HPARAMS_FILE)


def read_evaluations(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` (one per evaluation); unreadable lines are skipped.
    A damaged file (bytes that are not UTF-8) loses only its damaged lines, and one that is no
    regular file (a pipe would block the read, /dev/zero fill the memory) reads as none: one run
    never stops the listing or ``runs show``."""
    try:
        data = read_small_file(run_dir / runs.METRICS_FILE, limit=MAX_METRICS_BYTES)
    except (OSError, ValueError):
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(runs.normalize_metrics_record(record))
    return records


def is_in_use(run_dir: Path) -> bool:
    """Whether a process is training in the run now: it holds the run's lock file. The lock is
    only probed where its file exists (a finished run has none, and gets none from here)."""
    lock_path = run_dir / runs.LOCK_FILE
    if not lock_path.is_file():
        return False
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:  # unreadable: nothing can be said, so nothing is claimed
        return False
    lock.release()
    return False


def run_status(run_dir: Path) -> str:
    if is_in_use(run_dir):
        return RUNNING
    if (run_dir / runs.FAILURE_FILE).is_file():
        return FAILED
    if runs.resume_file(run_dir).is_file():
        return INTERRUPTED
    if (run_dir / runs.SUMMARY_FILE).is_file():
        return FINISHED
    return FAILED


def _best_validation_accuracy(records: list[dict]) -> float | None:
    """The validation accuracy of the best evaluation so far: lowest loss, then highest accuracy
    (how training picks the weights it keeps)."""
    scored = [r for r in records if _finite(r.get("validation_loss")) and _fraction(r.get("validation_accuracy")) is not None]
    if not scored:
        return None
    return min(scored, key=lambda r: (r["validation_loss"], -r["validation_accuracy"]))["validation_accuracy"]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fraction(value) -> float | None:
    """An accuracy as the listing shows it: a number from 0 to 1, else unknown (a summary.json
    edited by hand or damaged holds anything, and one run must not stop the listing)."""
    return value if _finite(value) and 0 <= value <= 1 else None


def _name(value) -> str | None:
    """A model, preset or weights name from a run's files: a string, else unknown."""
    return value if isinstance(value, str) and value else None


def _model_label(spec) -> str | None:
    """``gpt2-small``, ``tiny``, or a JSON config's file name without ``.json``."""
    if not isinstance(spec, str):
        return None
    return Path(spec).stem if spec.endswith(".json") else spec


def size_and_mtime(run_dir: Path) -> tuple[int, float]:
    """Bytes of every file under the folder (links not followed) and the newest modification time."""
    total, newest = 0, run_dir.lstat().st_mtime
    for folder, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            try:
                info = os.lstat(os.path.join(folder, name))
            except OSError:  # removed meanwhile
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
            newest = max(newest, info.st_mtime)
    return total, newest


def resume_command(run_dir: Path) -> str:
    return f"spamtune finetune --resume --run {shell_word(str(run_dir))}"


def bases_root_of(run_dir: Path) -> Path:
    """The data root whose ``bases/`` a compact run's base is looked up (and rebuilt) in: the
    folder above ``runs/`` or ``sweeps/`` for a run there, else the root it was trained in (if it
    still exists), else the default root."""
    run_dir = Path(run_dir).resolve()
    if run_dir.parent.name == "runs":
        return run_dir.parent.parent
    # A sweep's run (<root>/sweeps/<sweep>/<run>), which `bases ls` counts as a user of that
    # root's bases: in a data root moved or copied since, the recorded root is gone or another.
    if run_dir.parent.parent.name == "sweeps":
        return run_dir.parent.parent.parent
    recorded = (_read_json(run_dir / runs.BASE_REF_FILE) or {}).get("data_root")
    if isinstance(recorded, str) and Path(recorded).is_dir():
        return Path(recorded)
    return paths.data_root()


def base_of(run_dir: Path) -> dict | None:
    """A compact run's base as ``runs show`` reports it: ``sha256``, ``origin`` and whether the
    data root holds it (``stored``; a missing one is made again from its origin when the run
    loads, or named with how to get it back). None for a run holding its whole model."""
    record = _read_json(run_dir / runs.BASE_REF_FILE)
    if record is None:
        return None
    base = record.get("base") if isinstance(record.get("base"), dict) else {}
    sha256 = base.get("sha256")
    stored = isinstance(sha256, str) and paths.base_file(bases_root_of(run_dir), sha256).is_file()
    return {"sha256": sha256, "origin": base.get("origin"), "stored": stored}


def _compact_runs(root: Path) -> Iterable[Path]:
    yield from paths.run_folders(root)
    sweeps = sweeps_dir(root)
    if sweeps.is_dir():
        for sweep in sorted(p for p in sweeps.iterdir() if p.is_dir()):
            yield from sorted(p for p in sweep.iterdir() if p.is_dir() and (p / runs.BASE_REF_FILE).is_file())


def base_users(root: Path) -> dict[str, list[Path]]:
    """sha256 -> the run folders under ``root`` whose ``base.json`` names that base."""
    users: dict[str, list[Path]] = {}
    for run_dir in _compact_runs(root):
        base = (_read_json(run_dir / runs.BASE_REF_FILE) or {}).get("base")
        sha = base.get("sha256") if isinstance(base, dict) else None
        if isinstance(sha, str):
            users.setdefault(sha, []).append(run_dir)
    return users


def why_no_classifier(run_dir: Path) -> str:
    """Why ``run_dir`` holds no classifier to load or export, as ``spamtune runs`` sees it: a
    process is training in it, training stopped before it wrote one, or it is no run at all."""
    status = run_status(run_dir) if run_dir.is_dir() else None
    if status == RUNNING:
        return f"{run_dir} is still training (a process holds its lock); its classifier is written when training ends"
    if status == INTERRUPTED:
        return f"{run_dir} was interrupted before it wrote a classifier; continue it with: {resume_command(run_dir)}"
    if status == FAILED and (run_dir / runs.FAILURE_FILE).is_file():
        reason = (_read_json(run_dir / runs.FAILURE_FILE) or {}).get("reason")
        return f"{run_dir} is a failed run: training stopped before it wrote a classifier" + (f" ({reason})" if isinstance(reason, str) else "")
    if (run_dir / runs.DELTA_FILE).is_file() and not (run_dir / runs.BASE_REF_FILE).is_file():
        # The delta is only what training changed: without base.json it names no base to lay it over.
        return (
            f"{run_dir} holds {runs.DELTA_FILE} but no {runs.BASE_REF_FILE}, which names the base it was trained on; "
            f"copy {runs.BASE_REF_FILE} back from where the run was made"
        )
    return f"{run_dir} is not a run folder (no config.json with model.safetensors or delta.safetensors)"


def describe_run(run_dir: Path, now: float | None = None) -> RunInfo:
    now = time.time() if now is None else now
    summary = read_summary(run_dir) or {}
    hparams = read_hparams(run_dir) or {}
    status = run_status(run_dir)
    size, modified = size_and_mtime(run_dir)
    validation = _fraction(summary.get("validation_accuracy"))
    if validation is None:
        validation = _best_validation_accuracy(read_evaluations(run_dir))
    return RunInfo(
        name=run_dir.name,
        path=str(run_dir),
        status=status,
        model=_name(summary.get("model")) or _model_label(hparams.get("model")),
        trainable=_name(summary.get("trainable")) or _name(hparams.get("trainable")),
        weights=_name(summary.get("weights")) or _name(hparams.get("weights")),
        validation_accuracy=validation,
        test_accuracy=_fraction(summary.get("test_accuracy")),
        size_bytes=size,
        modified=datetime.fromtimestamp(modified, timezone.utc).isoformat(timespec="seconds"),
        age_seconds=round(max(0.0, now - modified), 1),
        resume_command=resume_command(run_dir) if status == INTERRUPTED else None,
    )


def list_runs(root: Path) -> list[RunInfo]:
    """Every run under ``<root>/runs``, the most recently written first."""
    now = time.time()
    infos = []
    for run_dir in paths.run_folders(root):
        try:
            infos.append(describe_run(run_dir, now))
        except OSError:  # removed while listing
            continue
    return sorted(infos, key=lambda info: (info.age_seconds, info.name))


def find_run(run: str | Path | None, root: Path) -> Path:
    """The run folder named on the command line (a bare name, a path, or the newest finished
    one), which must be a run: ``runs show`` and ``runs rm`` never act on another folder."""
    run_dir = paths.resolve_run(run, root)
    if not paths.looks_like_run(run_dir):
        raise SpamtuneError(f"{run_dir} is not a spamtune run folder (it holds none of {', '.join(runs.RUN_FILES)})")
    return run_dir


# Everything spamtune writes in a run folder (training, calibrate, evaluate's plots), besides
# hidden names (its lock, temporaries).
_RUN_ENTRIES = frozenset(
    (*runs.RUN_FILES, runs.FAILURE_FILE, runs.RESUME_DIR, "roc.svg", "pr.svg", "calibration.svg")
)


def check_removable(run_dir: Path, root: Path) -> None:
    """Refuse to remove a folder outside ``<root>/runs`` that holds anything a run never holds.

    A run file alone is weak evidence (a project folder has a ``config.json``; a Hugging Face
    model folder a ``model.safetensors``), and ``runs rm`` deletes the whole folder: given a
    path elsewhere, only a folder that holds nothing but what spamtune writes in a run is taken
    for one. A symbolic link is only unlinked, so it is not checked."""
    if run_dir.is_symlink() or os.path.realpath(run_dir.parent) == os.path.realpath(paths.runs_dir(root)):
        return
    try:
        foreign = sorted(name for name in os.listdir(run_dir) if not name.startswith(".") and name not in _RUN_ENTRIES)
    except OSError as exc:
        raise SpamtuneError(f"cannot read {run_dir}: {exc.strerror or exc}") from None
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise SpamtuneError(
            f"{run_dir} holds {shown}, which no spamtune run holds, so it is not removed; "
            "delete it by hand if it really is to go"
        )


def remove_run(run_dir: Path) -> None:
    """Delete a run folder. A symbolic link is removed, never what it points to; a real folder
    is first renamed to a hidden name (atomic), so no half-removed run is ever listed or used.
    A run that a process is training in is refused.

    The run's lock is held, as training holds it, until the folder is moved away: a resume
    starting meanwhile finds the run in use rather than trains in a folder being deleted."""
    try:
        if run_dir.is_symlink():
            run_dir.unlink()
            return
    except OSError as exc:
        raise SpamtuneError(f"cannot remove {run_dir}: {exc.strerror or exc}") from None
    had_lock_file = (run_dir / runs.LOCK_FILE).exists()
    try:
        lock = runs.lock_run_dir(run_dir)
    except runs.RunInUse:
        raise SpamtuneError(f"{run_dir} is in use: a process is training in it; stop that first") from None
    doomed = run_dir.with_name(f".{run_dir.name}.removing-{secrets.token_hex(4)}")
    try:
        os.rename(run_dir, doomed)
    except OSError as exc:
        if not had_lock_file:  # a finished run has none; it keeps none from here
            runs.release_finished(run_dir)
        lock.release()
        raise SpamtuneError(f"cannot remove {run_dir}: {exc.strerror or exc}") from None
    lock.release()
    shutil.rmtree(doomed, ignore_errors=True)
    if doomed.exists():
        raise SpamtuneError(f"{run_dir} was moved to {doomed} but could not be deleted completely; remove it by hand")
