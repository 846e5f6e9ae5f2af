"""Sweeps: every combination of some fine-tuning options, one run each, compared in one table.

A sweep is the base options plus a grid (option name -> the values to try). Its runs go into
one folder, each named after the values it takes (``lr-5e-05_trainable-last-block``), with
``sweep.json`` beside them, rewritten after every run. Running the same sweep again finds that
folder (it is named after a hash of the sweep) and skips the runs that finished, resumes the
one that was interrupted, and runs the rest. Runs share the frozen-prefix caches kept under the
data root, so only the first run on a given base, data and frozen depth builds one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from spamtune import paths, runs
from spamtune.errors import DiskFull, SpamtuneError, SpamtuneUsageError
from spamtune.fsutil import atomic_write_json, creation_failure, read_json
from spamtune.options import LORA_OPTIONS, as_typed, recorded_model

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = "spamtune-sweep/1"
# Options that say where or how fast to compute, not what is trained: they do not name a sweep.
_NOT_IDENTITY = ("device", "data_dir")


def sweeps_dir(root: Path) -> Path:
    return root / "sweeps"


# --------------------------------------------------------------------------- the grid


def _convert(field_type: str, name: str, text: str):
    """One value of a comma list, typed as the option is (``int | None`` takes ``none``). An
    empty value is none of them: ``--max-length "$LEN"`` with nothing in ``$LEN`` ran with the
    default, where ``finetune`` refuses it."""
    text = text.strip()
    optional = "None" in field_type
    if optional and text.lower() == "none":
        return None
    base = field_type.replace("| None", "").strip()
    try:
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
        if base == "bool":
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(text)
    except ValueError:
        raise SpamtuneUsageError(f"--{name.replace('_', '-')}: '{text}' is not a valid {base}") from None
    return text


def split_values(text: str) -> list[str]:
    """A comma list's values: ``a,b`` is two, ``a\\,b`` one holding a comma (``a,b``). Every
    other backslash is itself, so that a path such as ``C:\\data\\x.json`` or
    ``\\\\server\\share`` is written as it is."""
    return [item.replace("\\,", ",") for item in re.split(r"(?<!\\),", text)]


def parse_grid(options_type: type, values: dict[str, str]) -> dict[str, list]:
    """``{"lr": "1e-5,5e-5"}`` -> ``{"lr": [1e-05, 5e-05]}``, each value typed like the option;
    ``split_values`` cuts the lists."""
    types = {f.name: str(f.type) for f in fields(options_type)}
    grid = {}
    for name, text in values.items():
        if name not in types:
            raise SpamtuneUsageError(f"a sweep cannot vary '{name}'")
        parts = split_values(str(text))
        if len(parts) > 1 and not all(part.strip() for part in parts):
            # "--max-length 128," was a second run with no --max-length, and "--trainable head,"
            # a preset named "": a stray comma, not a value. Only an option that takes none can
            # be told to write it: "--lr 1e-4,none" is no float, so that advice led to a second error.
            advice = "write none for the option's default" if "None" in types[name] else "remove the stray comma"
            raise SpamtuneUsageError(f"--{name.replace('_', '-')} {text!r} lists an empty value; {advice}")
        items = [_convert(types[name], name, part) for part in parts]
        if len(set(map(_listed_as, items))) != len(items):
            raise SpamtuneUsageError(f"--{name.replace('_', '-')} lists a value twice")
        grid[name] = items
    return grid


def _listed_as(value) -> str:
    """What makes two listed values the same: their repr (1e-5 and 0.00001 alike), -0.0 and 0.0
    made one (one run, and no order between them for the sweep's hash)."""
    return repr(value + 0.0 if isinstance(value, float) else value)


# The most combinations a sweep takes. Each is checked and named before the first run, and
# sweep.json holds a row for each, rewritten after every run: a list pasted by mistake
# (`--seed $(seq -s, 1 1000000)`) spent minutes and gigabytes of memory on that before any
# output, for a sweep no machine would finish.
MAX_COMBINATIONS = 10_000


def check_grid_size(grid: dict[str, list]) -> None:
    """One usage error for a grid of more than ``MAX_COMBINATIONS`` combinations, counted
    without making them."""
    count = math.prod(len(values) for values in grid.values())
    if count > MAX_COMBINATIONS:
        sizes = " x ".join(f"{len(values):,} --{name.replace('_', '-')}" for name, values in grid.items() if len(values) > 1)
        raise SpamtuneUsageError(
            f"this sweep lists {count:,} combinations ({sizes}); a sweep takes at most {MAX_COMBINATIONS:,}: "
            "list fewer values, or split it into sweeps of their own --out"
        )


def combinations(grid: dict[str, list]) -> list[dict]:
    """Every combination, the first option varying slowest (the order runs are made in)."""
    check_grid_size(grid)
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def _refuse_unused_lora_values(base, grid: dict[str, list], combos: list[dict]) -> None:
    """LoRA's options given to a sweep none of whose runs trains LoRA would do nothing: a usage
    error, as for ``finetune``."""
    defaults = {f.name: f.default for f in fields(type(base))}
    given = [name for name in LORA_OPTIONS if name in grid or getattr(base, name) != defaults[name]]
    if given and not any(c.get("trainable", base.trainable) == "lora" for c in combos):
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise SpamtuneUsageError(f"{flags} {'applies' if len(given) == 1 else 'apply'} only with --trainable lora, and no run of this sweep trains lora")


def _distinct_runs(base, combos: list[dict]) -> list[dict]:
    """The combinations less the LoRA values of those that train no LoRA, each once: a sweep of
    ``--trainable lora,last-block --lora-rank 4,16`` is three runs, not a last-block run twice."""
    out: dict[tuple, dict] = {}  # keyed by the items, so that a long list is not compared pair by pair
    for overrides in combos:
        if overrides.get("trainable", base.trainable) != "lora":
            overrides = {name: value for name, value in overrides.items() if name not in LORA_OPTIONS}
        out.setdefault(tuple(sorted(overrides.items())), overrides)
    return list(out.values())


def run_name(overrides: dict) -> str:
    """``lr-5e-05_trainable-last-block``: the values a run takes, as a folder name; a negative
    number keeps its sign (``seed--1``), so that it never names the same folder as its opposite."""
    if not overrides:
        return "run"
    return _fitted("_".join(_name_part(name, value) for name, value in overrides.items()).strip("-.") or "run")


# The longest file name most file systems take, in bytes (a run name is ASCII): values such as
# two config files' paths make a longer one, which no folder can be named.
NAME_MAX = 255


def _fitted(name: str) -> str:
    """``name`` if a folder can take it, else its start and a hash of all of it: the same runs
    get the same folder in every invocation, and two runs never one between them."""
    if len(name) <= NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[: NAME_MAX - len(digest) - 1].rstrip('-._')}-{digest}"


def _name_part(name: str, value) -> str:
    negative = isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0
    safe = re.sub(r"[^A-Za-z0-9._+-]+|\.{2,}", "-", f"{name}-{-value if negative else value}")  # one path component, never ".."
    safe = re.sub(r"-{2,}", "-", safe)
    return f"{name}--{safe[len(name) + 1:]}" if negative else safe


def sweep_id(base: object, grid: dict[str, list]) -> str:
    """A hash of what the sweep trains: the base options (less where it computes) and the grid,
    each option's values in one order (the same runs however they were listed; a list given in
    that order hashes as it always did)."""
    identity = {k: v for k, v in asdict(base).items() if k not in _NOT_IDENTITY}
    canonical = {name: sorted(values, key=_value_order) for name, values in grid.items()}
    text = json.dumps({"base": identity, "grid": canonical}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _value_order(value) -> tuple:
    """None first, then numbers by value, then text: the order a person lists values in."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, str(value))


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class SweepRunStarted:
    index: int  # 1-based
    total: int
    name: str
    overrides: dict
    resumed: bool


@dataclass(frozen=True)
class SweepRunFinished:
    index: int
    total: int
    row: dict  # the sweep.json entry
    skipped: bool  # finished by an earlier invocation


@dataclass
class SweepResult:
    folder: Path
    rows: list[dict]

    @property
    def best(self) -> dict | None:
        done = [r for r in self.rows if r["status"] == "done"]
        return min(done, key=lambda r: (r["validation_loss"], -r["validation_accuracy"])) if done else None

    def ranked(self) -> list[dict]:
        """Finished runs by validation loss (then accuracy), then failed ones, then those not run yet."""
        order = {"done": 0, "failed": 1}
        return sorted(self.rows, key=lambda r: (order.get(r["status"], 2), r.get("validation_loss") or 0.0, -(r.get("validation_accuracy") or 0.0)))


def check_sweep_folder(folder: Path, identity: str, planned: dict[str, object] | None = None) -> None:
    """A sweep writes into a new or empty folder, or one that holds this same sweep: never among
    someone's files, where a run's folder could meet one of theirs. ``planned``: this sweep's
    runs, by folder name, with their options; a folder whose ``sweep.json`` is gone or damaged
    still holds this sweep when its runs show it (``_holds_only_these_runs``)."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise SpamtuneError(f"{folder} is not a folder; give --out a new or empty folder")
    record = folder / SWEEP_FILE
    if record.is_file():
        try:
            data = read_json(record, "sweep file")
        except SpamtuneError:
            if _holds_only_these_runs(folder, planned):
                return  # rewritten after the next run: a cut or edited file loses nothing the runs hold
            raise
        if not isinstance(data, dict) or data.get("format", SWEEP_FORMAT) != SWEEP_FORMAT:
            if _holds_only_these_runs(folder, planned):
                return
            raise SpamtuneError(f"{record} is not a spamtune sweep file; give --out a new or empty folder")
        found = data.get("id", identity)  # files before the id: trusted
        if found != identity:
            raise SpamtuneError(f"{folder} holds another sweep ({found}); give this one another --out")
        return
    if any(p.name != runs.LOCK_FILE for p in folder.iterdir()):  # the lock: a sweep starting there
        if _holds_only_these_runs(folder, planned):
            return
        raise SpamtuneError(f"{folder} is not empty and holds no sweep; give --out a new or empty folder")


def _holds_only_these_runs(folder: Path, planned: dict[str, object] | None) -> bool:
    """Whether ``folder`` holds this sweep's runs and nothing else (beside its lock and a
    ``sweep.json`` that cannot say): at least one run, each a folder named as one of ``planned``
    whose ``hparams.json`` records that run's options. The runs' own files then identify the
    sweep as its ``sweep.json`` would have, so finished runs are skipped again rather than the
    folder refused, with no way to go on but training them all again elsewhere."""
    if not planned:
        return False
    entries = [p for p in folder.iterdir() if p.name not in (runs.LOCK_FILE, SWEEP_FILE)]
    shown = False
    for entry in entries:
        options = planned.get(entry.name)
        if options is None or entry.is_symlink() or not entry.is_dir():
            return False
        if {p.name for p in entry.iterdir()} <= {runs.LOCK_FILE}:
            continue  # a run killed as it started: holds nothing, and the sweep starts it again
        try:
            hparams = runs.read_hparams(entry)
        except SpamtuneError:
            return False
        # The run recorded its model as a run does: a config file's path absolute.
        expected = {k: v for k, v in asdict(replace(options, model=recorded_model(options.model))).items() if k not in _NOT_IDENTITY}
        if not isinstance(hparams, dict) or any(k not in hparams or hparams[k] != v for k, v in expected.items()):
            return False
        shown = True
    return shown


def started_run(run_dir: Path) -> bool:
    """A run folder that training made (or began to: nothing in it yet but its lock)."""
    return paths.looks_like_run(run_dir) or (run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {runs.LOCK_FILE})


class SweepInUse(SpamtuneError):
    def __init__(self, folder: Path):
        super().__init__(f"sweep is in use by another process: {folder}")


# Options whose listed values can be spelt apart and still train the same run; what each means is
# compared, not how it is spelt.
_RESOLVED = ("device", "precision", "trainable", "lora_blocks", "model", "strategy")


def _model_identity(spec: str) -> str:
    """The model a ``--model`` value names: a size whatever its spelling (``gpt2``, ``124M``,
    ``GPT2-small``), or a config file however its path is written (``tiny.json``, ``./tiny.json``)."""
    from spamtune.model_names import canonical_model_name, names_config_file

    if not names_config_file(spec):
        try:
            return canonical_model_name(spec)
        except SpamtuneError:
            pass
    return os.path.realpath(spec)


def _check_distinct_runs(base, combos: list[dict], trainables: list) -> None:
    """A device this machine lacks, or a precision its device cannot run (fp16 off CUDA):
    one error before the first run, like the other options, not a failure after it. Two runs
    that differ only in what ``auto`` means here (``--precision auto,bf16`` on a bf16 CPU), or
    in how a preset is spelt (``--trainable last-block,last-1-blocks``; ``--lora-blocks
    none,12`` on a 12-block model, where none is every block) or a model (``--model gpt2,124M``)
    would train the same thing twice
    under two names: a usage error, as a value listed twice is. ``trainables``: each
    combination's parsed preset (``validate_options``)."""
    from spamtune.device import resolve_device, resolve_precision

    resolved: dict[tuple, dict] = {}
    for overrides, trainable in zip(combos, trainables):
        options = replace(base, **overrides)
        device = resolve_device(options.device)
        precision = resolve_precision(options.precision, device)
        trains = (trainable.preset == "lora", trainable.first_block, trainable.final_norm, trainable.embeddings)
        rest = tuple(sorted((k, repr(v)) for k, v in overrides.items() if k not in _RESOLVED))
        # The strategy is not part of what a sweep's run trains: a sweep joins no process group, so
        # each run trains in one process, plainly whatever --strategy says (train.check_strategy).
        same = resolved.setdefault((rest, str(device), precision, trains, _model_identity(options.model)), overrides)
        if same is not overrides:
            differ = [k for k in _RESOLVED if same.get(k, getattr(base, k)) != overrides.get(k, getattr(base, k))]
            listed = " and ".join(
                f"--{k.replace('_', '-')} {as_typed(same.get(k, getattr(base, k)))} and {as_typed(overrides.get(k, getattr(base, k)))}" for k in differ
            )
            if {"device", "precision"} & set(differ):
                here = f"the same here ({device.type}, {precision})"
            elif "strategy" in differ:
                here = "the same in a sweep (each run trains in one process, with either)"
            else:
                here = "the same run"
            raise SpamtuneUsageError(f"{listed} are {here}: the sweep would train one run twice")


def _row(
    name: str, overrides: dict, run_dir: Path, status: str, summary: dict | None, error: str | None = None, skipped: bool = False
) -> dict:
    """One run's row of sweep.json. ``status``: "done" (by this invocation, or an earlier one:
    then ``skipped``), "failed" (``error`` says why), or not finished yet: "interrupted" (it
    resumes from its checkpoint next time) or "pending" (not started)."""
    summary = summary or {}
    return {
        "name": name,
        "run": str(run_dir),
        "overrides": overrides,
        "status": status,
        "skipped": skipped,
        **{figure: summary.get(figure) for figure in _FIGURES},
        "error": error,
    }


# What a row of sweep.json takes from a run's summary.json; the two it is ranked by must be there.
_FIGURES = ("validation_accuracy", "validation_loss", "test_accuracy", "test_loss", "wall_time_s", "trainable_params")
_RANKED_BY = ("validation_accuracy", "validation_loss")


def _earlier_summary(run_dir: Path) -> dict:
    """The summary of a run an earlier invocation finished. One error naming the file where it is
    not what training writes (edited by hand, damaged): the table cannot rank such a run."""
    path = run_dir / runs.SUMMARY_FILE
    summary = read_json(path, "run summary")

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not (
        isinstance(summary, dict)
        and all(number(summary.get(figure)) for figure in _RANKED_BY)
        and all(summary.get(figure) is None or number(summary[figure]) for figure in _FIGURES)
    ):
        raise SpamtuneError(f"cannot read run summary {path}: it does not hold the run's figures; remove {run_dir} to run it again")
    return summary


def _check_same_data(folder: Path, names: list[str], root: Path, fingerprint: str | None) -> None:
    """The runs already in the sweep's folder were trained on the data now prepared in ``root``:
    the sweep's name does not hash the data, so after a new ``spamtune prepare`` the same command
    finds the same folder, and would rank runs trained on the old splits as this sweep's (and
    fail the interrupted one, whose resume needs its own splits). One error before any run."""
    for name in names:
        if fingerprint is None or (folder / name).is_symlink():  # in the way, said as such by the run; never followed
            continue
        recorded = _recorded_fingerprint(folder / name)
        if recorded is not None and recorded != fingerprint:
            raise SpamtuneError(
                f"{folder / name} was trained on other data than is now prepared in {root}; "
                f"give this sweep another --out, or remove {folder} to run it again"
            )


def _check_same_models(folder: Path, models: dict) -> None:
    """The runs already in the sweep's folder were trained on the model each run's ``--model``
    names now (``models``: each run's config, by folder name). The sweep's name hashes a config
    file's path as it was given: the same command run from another directory, where that
    relative path is another file, or after the file was edited, finds the same folder, and
    would skip its finished runs as this sweep's, ranking runs of another model. One error
    before any run. Compared as configs, as a resumed run reads its own (a field added since
    with its default is the same model)."""
    from spamtune.model import GPTConfig

    for name, expected in models.items():
        run_dir = folder / name
        if run_dir.is_symlink():  # in the way, said as such by the run; never followed
            continue
        try:
            hparams = runs.read_hparams(run_dir)
            recorded = GPTConfig.from_dict(hparams["resolved"]["model_config"])
        except (SpamtuneError, LookupError, TypeError, ValueError):  # no run yet, or none this can read
            continue
        if recorded != expected:
            raise SpamtuneError(
                f"{run_dir} was trained on another model ({hparams.get('model')}) than this sweep's --model names now "
                "(a config file's relative path is another file from here, or the file changed); "
                f"give this sweep another --out, or remove {folder} to run it again"
            )


def _recorded_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of the splits a run trained on, as its ``hparams.json`` records it; None
    where there is no run yet, or none this can read."""
    try:
        resolved = runs.read_hparams(run_dir).get("resolved")
    except (SpamtuneError, AttributeError):
        return None
    recorded = resolved.get("data_fingerprint") if isinstance(resolved, dict) else None
    return recorded if isinstance(recorded, str) else None


def _current_fingerprint(root: Path) -> str | None:
    """The fingerprint of the splits prepared in ``root`` now; None where one is missing (the
    run that reads them says so)."""
    from spamtune.examples import data_fingerprint
    from spamtune.split_lock import reading_splits

    try:
        with reading_splits(root):  # not a fingerprint of files from two preparations
            return data_fingerprint(root)
    except OSError:
        return None


class DataChanged(SpamtuneError):
    """The prepared splits changed while the sweep ran: its runs would not be comparable."""

    def __init__(self, root: Path, run_dir: Path, trained: bool):
        advice = f"remove {run_dir}, " if trained else ""
        super().__init__(
            f"the prepared splits in {root} changed while this sweep ran, so {run_dir} "
            f"{'trained' if trained else 'would train'} on other data than the runs before it; {advice}"
            "prepare them as before and run the same command to go on, or give the sweep another --out"
        )


def _check_no_lost_state(folder: Path, names: list[str]) -> None:
    """No run in the sweep's folder has trained yet lost its resume state, nor finished and lost
    its weights: the sweep would take it for one stopped before its first checkpoint, remove it
    and train it again from the start, metrics (and weights) gone. One error before any run. A
    finished run has no resume state to lose: the end of training removes it."""
    for name in names:
        run_dir = folder / name
        if run_dir.is_symlink() or not run_dir.is_dir() or runs.resume_file(run_dir).is_file():
            continue
        if runs.is_finished(run_dir) and not runs.is_classifier_dir(run_dir):
            # Finished, then its weights or config went (moved away, removed by hand): not a run
            # the sweep can skip, and its summary and metrics are no leftovers of a run stopped
            # before its first checkpoint, which is all the sweep removes.
            raise SpamtuneError(
                f"{run_dir} finished, but its weights or {runs.CONFIG_FILE} are missing, so this sweep can "
                f"neither rank it nor go on with it; put them back, or remove {run_dir} to train it again"
            )
        if not (run_dir / runs.SUMMARY_FILE).is_file() and runs.has_trained(run_dir):
            raise SpamtuneError(
                f"{run_dir} has trained but its resume state {runs.resume_file(run_dir)} is missing, so this "
                f"sweep can neither go on with it nor start it again; remove {run_dir} to train it from the start"
            )


def run_sweep(
    base,
    grid: dict[str, list],
    out: str | Path | None = None,
    on_event: Callable[[object], None] | None = None,
    *,
    finetune: Callable | None = None,
    resume_finetune: Callable | None = None,
) -> SweepResult:
    """Run every combination of ``grid`` over the options ``base`` (a ``FinetuneOptions``).

    ``out`` defaults to ``<data root>/sweeps/sweep-<id>``, the same folder for the same sweep.
    Every combination's options are checked first, so a value that cannot work (a misspelt
    preset, a learning rate of 0) is one error before any run, not a failure hours in. A run
    whose training diverges is recorded as failed and the sweep goes on; Ctrl-C stops it after
    writing ``sweep.json`` (the interrupted run resumes next time).
    """
    from spamtune import train
    from spamtune.examples import prepared_data
    from spamtune.options import validate_options

    finetune = finetune or train.finetune
    resume_finetune = resume_finetune or train.resume_finetune
    emit = on_event or (lambda event: None)
    root = Path(base.data_dir)
    _refuse_unused_lora_values(base, grid, combinations(grid))
    combos = _distinct_runs(base, combinations(grid))
    # A value that cannot work is the first thing to say (not a name clash).
    checked = [validate_options(replace(base, **overrides)) for overrides in combos]
    trainables = [trainable for _, trainable in checked]
    names = [run_name(c) for c in combos]
    if len(set(names)) != len(names):
        raise SpamtuneUsageError("two runs of this sweep would get the same folder name; make the listed values differ more")
    _check_distinct_runs(base, combos, trainables)
    prepared_data(root)  # every run would fail on an unprepared data root: say it once
    identity = sweep_id(base, grid)
    # Absolute, as every path spamtune hands out: sweep.json and each run's summary record it,
    # and a relative --out made them name the runs from the directory the sweep ran in only.
    folder = paths.absolute(out) if out else sweeps_dir(root) / f"sweep-{identity}"
    if not out and folder.is_symlink():
        # The sweep names and makes this folder itself: a link there is someone else's, and the
        # runs would land wherever it points. A folder named with --out is the user's to choose.
        raise SpamtuneError(f"{folder} is a symbolic link, not a folder this sweep made; remove it, or give the sweep an --out")
    if folder.is_symlink() and not folder.exists():
        # A link to a drive not mounted, or to a folder moved away: the only error would be mkdir's "File exists".
        raise SpamtuneError(f"the sweep folder {folder} is a symbolic link to {os.readlink(folder)}, which does not exist; give another --out")
    runs.check_utf8_path(root, "the data root")  # sweep.json records it
    runs.check_utf8_path(folder, "the sweep folder")
    check_sweep_folder(folder, identity, {name: replace(base, **overrides) for name, overrides in zip(names, combos)})
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpamtuneError(f"cannot create the sweep folder {folder}: {creation_failure(folder, exc)}") from None
    # Two processes on one sweep would each find the other's run locked, mark it failed, and the
    # last to write sweep.json would rank a finished run as failed.
    with runs.hold_folder(folder, SweepInUse, "the sweep folder"):
        fingerprint = _current_fingerprint(root)
        _check_same_data(folder, names, root, fingerprint)
        _check_same_models(folder, {name: cfg for name, (cfg, _) in zip(names, checked)})
        _check_no_lost_state(folder, names)
        return _run_all(base, grid, identity, folder, combos, names, emit, on_event, finetune, resume_finetune, fingerprint)


def _run_all(base, grid, identity, folder, combos, names, emit, on_event, finetune, resume_finetune, fingerprint) -> SweepResult:
    """``run_sweep``'s runs, one after the other, in the folder this process holds, every one on
    the splits whose ``fingerprint`` the sweep started with (a prepare meanwhile stops it)."""
    root = Path(base.data_dir)
    from spamtune.events import TrainingStopped

    rows: list[dict] = []
    result = SweepResult(folder, rows)

    def save() -> None:
        """sweep.json: one row per combination, those not finished yet as they stand."""
        best = result.best
        seen = {row["name"] for row in rows}
        waiting = [
            _row(name, overrides, folder / name, "interrupted" if runs.resume_file(folder / name).is_file() else "pending", None)
            for overrides, name in zip(combos, names)
            if name not in seen
        ]  # fmt: skip
        atomic_write_json(folder / SWEEP_FILE, {
            "format": SWEEP_FORMAT,
            "id": identity,
            "base_options": asdict(base),
            "grid": grid,
            "runs": SweepResult(folder, rows + waiting).ranked(),
            "best": best["name"] if best else None,
        })  # fmt: skip

    if not (folder / SWEEP_FILE).is_file():
        save()  # before the first run, so that a folder interrupted in it is known as this sweep's
    for index, (overrides, name) in enumerate(zip(combos, names), start=1):
        run_dir = folder / name
        in_the_way = SpamtuneError(f"{run_dir} is in the way of this sweep's run '{name}' and is not one; move it, or give another --out")
        if run_dir.is_symlink():  # the sweep makes its run folders: a link is someone else's, never followed
            raise in_the_way
        if runs.is_finished(run_dir) and runs.is_classifier_dir(run_dir):
            row = _row(name, overrides, run_dir, "done", _earlier_summary(run_dir), skipped=True)
            rows.append(row)
            save()
            emit(SweepRunFinished(index, len(combos), row, skipped=True))
            continue
        resumable = runs.resume_file(run_dir).is_file()
        if run_dir.exists() and not resumable:
            if not started_run(run_dir):
                raise in_the_way
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to keep
        if _current_fingerprint(root) not in (None, fingerprint):
            save()
            raise DataChanged(root, run_dir, trained=False)
        emit(SweepRunStarted(index, len(combos), name, overrides, resumable))
        tick = time.perf_counter()
        try:
            if resumable:
                summary = resume_finetune(run_dir, {"device": base.device, "data_dir": base.data_dir}, on_event)
            else:
                summary = finetune(replace(base, **overrides), run_dir, on_event)
            row = _row(name, overrides, run_dir, "done", summary)
        except KeyboardInterrupt:
            save()
            raise
        except SpamtuneError as exc:
            if getattr(exc, "exit_code", 1) == 130:  # Ctrl-C inside training: stop the sweep
                save()
                raise
            if isinstance(exc, (DiskFull, TrainingStopped)):
                # Not the run's own failure, as a divergence is: the next run would stop the same
                # way (a full disk) after its own start-up. Stopped as by Ctrl-C, to go on later.
                save()
                raise SpamtuneError(f"{exc}; the sweep stopped: the same command goes on from there") from None
            row = _row(name, overrides, run_dir, "failed", {"wall_time_s": round(time.perf_counter() - tick, 3)}, str(exc))
        rows.append(row)
        save()
        if _recorded_fingerprint(run_dir) not in (None, fingerprint):  # a prepare as the run read the splits
            raise DataChanged(root, run_dir, trained=True)
        emit(SweepRunFinished(index, len(combos), row, skipped=False))
    return result
