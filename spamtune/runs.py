"""A run folder: the one place that names its files, and creates, claims, locks and reads one.

A fine-tuning run writes, in ``<data root>/runs/<timestamp>-<model>-<trainable>`` or ``--out``:

* ``config.json`` and the weights: ``delta.safetensors`` + ``base.json`` (a compact run, the
  default: what training changed and the base it changed, ``spamtune.compact``), or
  ``model.safetensors``, the whole classifier (``spamtune.checkpoint``);
* ``hparams.json``: the options and what they resolved to; ``metrics.jsonl``: one line per
  evaluation; ``summary.json``: the final figures, written last; ``curves.svg``;
* ``calibration.json``: the temperature and decision threshold fitted on validation, written
  after training and again by ``spamtune calibrate`` (``spamtune.calibration``);
* ``resume/state.safetensors`` while the run is unfinished (``spamtune.resume``).

Only the standard library is imported here: ``paths.latest_run`` and the CLI read these names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from spamtune.errors import SpamtuneError
from spamtune.fsutil import atomic_write_json, atomic_write_text, creation_failure, read_json, remove_stale_temporaries

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HPARAMS_FILE = "hparams.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
# Written when training stops for good (a diverging loss) rather than by an interruption: the
# resume checkpoint stays, but the listing must not offer it as a run to simply continue.
FAILURE_FILE = "failure.json"
CURVES_FILE = "curves.svg"
CALIBRATION_FILE = "calibration.json"  # temperature and decision threshold (spamtune.calibration)
# A compact run (spamtune.compact), the default, holds the tensors training changed and names
# its base, instead of the full model.
DELTA_FILE = "delta.safetensors"
BASE_REF_FILE = "base.json"
RESULT_FILES = (CONFIG_FILE, HPARAMS_FILE, METRICS_FILE, SUMMARY_FILE, CURVES_FILE, CALIBRATION_FILE)
RUN_FILES = (WEIGHTS_FILE, DELTA_FILE, BASE_REF_FILE, *RESULT_FILES)  # any of them marks a run folder
RESUME_DIR = "resume"
RESUME_FILE = "state.safetensors"
# Held by the process training in the folder, so that a second one (a repeated --resume)
# refuses rather than trains the same run twice. Hidden: it is no part of the results.
LOCK_FILE = ".lock"


class RunInUse(SpamtuneError):
    def __init__(self, run_dir: Path):
        super().__init__(f"run is in use by another process: {run_dir}")
        self.run_dir = run_dir


def resume_file(run_dir: Path) -> Path:
    return Path(run_dir) / RESUME_DIR / RESUME_FILE




def finished_run_files(compact: bool = True) -> tuple[str, ...]:
    """The files of a finished run folder, as ``finetune`` leaves it."""
    return (*((DELTA_FILE, BASE_REF_FILE) if compact else (WEIGHTS_FILE,)), *RESULT_FILES)


def weights_file(path: Path) -> Path | None:
    """The file holding a run's weights: the full model, else a compact run's delta."""
    if (path / WEIGHTS_FILE).is_file():
        return path / WEIGHTS_FILE
    if (path / DELTA_FILE).is_file() and (path / BASE_REF_FILE).is_file():
        return path / DELTA_FILE
    return None


def is_classifier_dir(path: Path) -> bool:
    """A folder holding a usable classifier: weights (full, or compact) and their config."""
    return weights_file(path) is not None and (path / CONFIG_FILE).is_file()


def is_finished(run_dir: Path) -> bool:
    """Training completed: the summary is written and no resume state is left."""
    return (run_dir / SUMMARY_FILE).is_file() and not (run_dir / RESUME_DIR).is_dir()


def has_trained(run_dir: Path) -> bool:
    """Training in the run took steps: it left an evaluation, weights, a summary or a failure.
    A run with none of them (killed before its first checkpoint) has nothing to lose."""
    names = (METRICS_FILE, WEIGHTS_FILE, DELTA_FILE, SUMMARY_FILE, FAILURE_FILE)
    return any((Path(run_dir) / name).is_file() for name in names)


def check_utf8_path(path: Path, what: str) -> None:
    """Refuse ``path`` for a run's or a sweep's files when it is not UTF-8 (a name's bytes that
    are no UTF-8 read as lone surrogates): safetensors opens a file by its UTF-8 path, and the
    JSON files of a run and a sweep record where they are, so a run there trained to its end,
    then failed as it saved, with an "unexpected UnicodeEncodeError"."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise SpamtuneError(f"{what} {path} is not a UTF-8 path (it holds bytes that are no UTF-8), which a run's files cannot be written under; give another") from None


def new_run_dir(runs: Path, name: str) -> Path:
    """A fresh ``<runs>/<timestamp>-<name>``, never an existing folder."""
    base = runs / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"
    check_utf8_path(base, "the run folder")
    for attempt in range(1, 1000):
        candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise SpamtuneError(f"cannot create run folder {candidate}: {creation_failure(candidate, exc)}") from None
    raise SpamtuneError(f"cannot find a free run folder name beside {base}")


class RunFolderTaken(SpamtuneError):
    """The folder asked for already holds something: a run never overwrites another."""

    def __init__(self, out: Path):
        super().__init__(f"{out} already exists and is not empty")
        self.out = out


def check_run_dir_free(out: Path) -> None:
    """Raise unless ``out`` is new or empty, and a path a run can record."""
    check_utf8_path(out, "the run folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunFolderTaken(out)


def claim_run_dir(out: Path) -> Path:
    """Use ``out`` only if it is new or empty."""
    check_run_dir_free(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpamtuneError(f"cannot create run folder {out}: {creation_failure(out, exc)}") from None
    return out


def lock_run_dir(run_dir: Path):
    """Hold the run folder for this process (a context manager), or raise ``RunInUse`` at once.

    ``runs rm`` holds the lock while it moves the folder away, so a process that looked at the
    folder before that may get a lock that no longer guards it: a lock file in the moved folder,
    or one in an empty folder the lock made in its place. The folder is the same before and
    after, or the run is gone and nothing is held or left."""
    run_dir = Path(run_dir)
    try:
        # Open while locking: a deleted folder's number cannot go to a new one meanwhile.
        opened = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY) if hasattr(os, "O_DIRECTORY") else None
    except OSError:
        opened = None
    try:
        try:
            before = os.fstat(opened) if opened is not None else os.stat(run_dir)
        except OSError:
            raise SpamtuneError(f"no run folder {run_dir}") from None
        lock = hold_folder(run_dir, RunInUse, "run folder")
        try:
            after = os.stat(run_dir)
        except OSError:
            after = None
    finally:
        if opened is not None:
            os.close(opened)
    if after is not None and (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino):
        return lock
    if after is not None:  # made by the lock: only what it made goes
        try:
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            run_dir.rmdir()
        except OSError:  # something else is in it: not ours
            pass
    lock.release()
    raise SpamtuneError(f"no run folder {run_dir}: it was removed meanwhile")


def hold_folder(folder: Path, in_use: Callable[[Path], SpamtuneError], what: str):
    """Hold ``folder`` for this process through its ``LOCK_FILE`` (a context manager), or raise
    ``in_use(folder)`` at once. The lock is the operating system's, so a killed process never
    leaves it held."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / LOCK_FILE), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise in_use(folder) from None
    except OSError as exc:
        raise SpamtuneError(f"cannot lock {what} {folder}: {exc.strerror or exc}") from None
    return lock


def release_finished(run_dir: Path) -> None:
    """Remove the lock file of a run that has just finished, while still holding it. A process
    that opened it meanwhile finds the run finished once it gets the lock, so nothing can train
    the run again; an unfinished run keeps its lock file, whose one inode all its users share."""
    (Path(run_dir) / LOCK_FILE).unlink(missing_ok=True)


def remove_unstarted(run_dir: Path) -> None:
    """Remove a run folder that training never got going in: what ``finetune`` writes before
    its first checkpoint (``hparams.json``, ``base.json``, the lock, temporaries), then the
    folder, if that leaves it empty. Anything else in it stays, and so does the folder."""
    run_dir = Path(run_dir)
    for name in (HPARAMS_FILE, BASE_REF_FILE, LOCK_FILE):
        (run_dir / name).unlink(missing_ok=True)
    remove_leftovers(run_dir)
    for folder in (run_dir / RESUME_DIR, run_dir):
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone: left as it is
            pass


def remove_leftovers(run_dir: Path) -> None:
    """Temporaries of writes a kill cut short (the final model, a checkpoint): the folder is
    locked, so nothing is writing them any more."""
    for folder in (run_dir, run_dir / RESUME_DIR):
        if folder.is_dir():
            remove_stale_temporaries(folder)


# The figures of every evaluation record (``metrics.jsonl``'s lines, the best one kept in the
# resume state), under summary.json's names.
EVALUATION_FIGURES = ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy")
# ``metrics.jsonl`` once used short names; runs written then are still read under today's,
# which are those of ``summary.json``.
_OLD_METRIC_NAMES = {"train_acc": "train_accuracy", "val_loss": "validation_loss", "val_acc": "validation_accuracy"}


def normalize_metrics_record(record: dict) -> dict:
    """One ``metrics.jsonl`` line under the field names ``summary.json`` uses."""
    return {_OLD_METRIC_NAMES.get(key, key): value for key, value in record.items()}


def read_metrics(run_dir: Path) -> list[dict]:
    """A run's ``metrics.jsonl`` records. The file is only ever rewritten whole, so a line that
    is no record was edited or damaged since: one error naming it, rather than a bare JSON error
    stopping a resume, or the line carried on into the run's curves."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as exc:
        raise SpamtuneError(f"cannot read {path}: {exc}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise SpamtuneError(f"{path}, line {number}, is not an evaluation record (a JSON object with its step); fix or remove that line")
        records.append(normalize_metrics_record(record))
    return records


def write_metrics(run_dir: Path, records: list[dict]) -> None:
    atomic_write_text(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))


def read_hparams(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / HPARAMS_FILE, "run hyperparameters")


def write_hparams(run_dir: Path, hparams: dict) -> None:
    atomic_write_json(Path(run_dir) / HPARAMS_FILE, hparams)


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY_FILE, summary)


def write_failure(run_dir: Path, reason: str, step: int) -> None:
    atomic_write_json(Path(run_dir) / FAILURE_FILE, {"status": "failed", "reason": reason, "step": step})


def clear_failure(run_dir: Path) -> None:
    """A resumed run is no longer the failed one (it fails again, or not, on its own)."""
    (Path(run_dir) / FAILURE_FILE).unlink(missing_ok=True)
