"""Where spamtune keeps things: one data root for downloads, prepared splits and runs.

The root is ``--data-dir`` if given, else ``$SPAMTUNE_HOME``, else the platform's user data
folder (``~/.local/share/spamtune`` on Linux, ``~/Library/Application Support/spamtune`` on
macOS, ``%LOCALAPPDATA%\\spamtune`` on Windows), so a tool installed with pip finds its runs
from any working directory. Every path handed out is absolute, so error messages say exactly
where spamtune looked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from spamtune.errors import SpamtuneError, SpamtuneUsageError
from spamtune.fsutil import expand_user
from spamtune.runs import RESUME_DIR, RUN_FILES, is_classifier_dir, is_finished, weights_file

ENV_HOME = "SPAMTUNE_HOME"
APP_NAME = "spamtune"
SPLITS = ("train", "validation", "test")
# Appended to "not found" errors about the data root: what the user can change.
ELSEWHERE = f"to use another data root, pass --data-dir DIR or set {ENV_HOME}=DIR"


def default_data_root() -> Path:
    """The platform's per-user data folder for spamtune (created on first write, not here)."""
    from platformdirs import user_data_path

    return user_data_path(APP_NAME, appauthor=False)


def data_root(override: str | Path | None = None) -> Path:
    """``override`` (``--data-dir``), else ``$SPAMTUNE_HOME``, else ``default_data_root()``;
    absolute. A file there is an error: listed as a root, it would read as an empty one."""
    if override:
        root = absolute(override)
    elif os.environ.get(ENV_HOME):
        root = absolute(os.environ[ENV_HOME])
    else:
        root = absolute(default_data_root())
    if root.exists() and not root.is_dir():
        raise SpamtuneError(f"the data root {root} is not a folder ({data_root_source(override)}); {ELSEWHERE}")
    if root.is_symlink() and not root.exists():
        # A link to a drive not mounted, or to a folder moved away: listed, it would read as an
        # empty root, and written to, the only error would be mkdir's "File exists".
        raise SpamtuneError(
            f"the data root {root} is a symbolic link to {os.readlink(root)}, which does not exist "
            f"({data_root_source(override)}); {ELSEWHERE}"
        )
    return root


def data_root_source(override: str | Path | None = None) -> str:
    """Where ``data_root(override)`` came from, in words (for ``runs`` and error hints)."""
    if override:
        return "--data-dir"
    if os.environ.get(ENV_HOME):
        return f"${ENV_HOME}"
    return "the default (the user data folder)"


def absolute(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, made absolute (not resolved: a link in it stays one)."""
    return expand_user(path).absolute()


def sms_file(root: Path) -> Path:
    """Where ``spamtune download data`` puts the SMS Spam Collection."""
    return root / "sms_spam_collection" / "SMSSpamCollection"


def models_dir(root: Path) -> Path:
    return root / "models"


def split_file(root: Path, split: str) -> Path:
    return root / f"{split}.csv"


def labels_file(root: Path) -> Path:
    return root / "labels.json"


def prepare_record_file(root: Path) -> Path:
    return root / "prepare.json"


def runs_dir(root: Path) -> Path:
    return root / "runs"


def looks_like_run(path: Path) -> bool:
    """A folder that training created (or a saved classifier): holds at least one run file.
    What ``spamtune runs`` lists and the only kind of folder ``runs rm`` removes."""
    return path.is_dir() and any((path / name).exists() for name in (*RUN_FILES, RESUME_DIR))


def run_folders(root: Path) -> list[Path]:
    """Every run folder under ``<root>/runs``, in name order (hidden folders skipped)."""
    base = runs_dir(root)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if not p.name.startswith(".") and looks_like_run(p))


def latest_run(root: Path) -> Path:
    """The run ``evaluate`` and ``predict`` use by default: the newest finished run under
    ``<root>/runs``, else the newest folder with weights and config (a run still training or
    stopped, or one saved without training). Folders without weights are never picked, so a
    run that has just started does not hide the previous one. Newest is by the weights' mtime."""
    base = runs_dir(root)
    runs = []
    for p in run_folders(root):
        if not is_classifier_dir(p):
            continue
        try:
            written = weights_file(p).stat().st_mtime
        except (OSError, AttributeError):  # removed meanwhile
            continue
        runs.append((is_finished(p), written, p.name, p))
    if not runs:
        raise SpamtuneError(f"no fine-tuned model found in {base}; run `spamtune finetune` first, or {ELSEWHERE}")
    return max(runs)[-1]


def is_bare_name(run: str) -> bool:
    """``20261125-101500-tiny-all`` is a name; ``./x``, ``runs/x``, ``/abs/x`` and ``~/x`` are paths."""
    return bool(run) and run not in (".", "..") and os.sep not in run and (os.altsep or os.sep) not in run and not run.startswith("~")


def new_run_path(run: str | Path, root: Path) -> Path:
    """Where ``finetune --run RUN`` creates a run: a bare name under ``<root>/runs``, a path as given."""
    text = str(run)
    return runs_dir(root) / text if is_bare_name(text) else absolute(text)


def resolve_run(run: str | Path | None, root: Path) -> Path:
    """The run folder a command was pointed at, as an absolute path.

    ``None`` (no ``--run``): the newest finished run under ``<root>/runs`` (``latest_run``).
    A bare name: ``<root>/runs/NAME``, or, when there is none, a folder of that name in the
    working directory. Anything with a slash (or ``~``) is a path. The folder must exist;
    whether it holds a usable model is for the caller to check.
    """
    if run is None or str(run) == "":
        return latest_run(root)
    text = str(run)
    if is_bare_name(text):
        named = runs_dir(root) / text
        if named.is_dir():
            return named
        if Path(text).is_dir():
            return absolute(text)
        raise SpamtuneError(
            f"run folder not found: no run named '{text}' in {runs_dir(root)} (`spamtune runs` lists them), "
            f"nor a folder {absolute(text)}; {ELSEWHERE}"
        )
    path = absolute(text)
    if path.is_file():  # e.g. a run's model.safetensors, or a file `spamtune export` wrote
        raise SpamtuneError(
            f"{path} is a file, not a run folder; give the run folder (an exported classifier is for "
            "other tools: predict with the run it came from)"
        )
    if not path.is_dir():
        raise SpamtuneError(f"run folder not found: {path}")
    return path


# Hugging Face repositories of OpenAI's released GPT-2 checkpoints.
HF_REPOS = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
HF_WEIGHTS_FILE = "model.safetensors"


def imported_weights_file(root: Path, name: str) -> Path:
    """Where ``spamtune download model NAME --from FILE`` puts a carried-over weights file."""
    return models_dir(root) / name / HF_WEIGHTS_FILE


def find_pretrained_weights(root: Path, name: str) -> Path | None:
    """The GPT-2 weights for a named size: imported into the data root, else in the HF cache."""
    local = imported_weights_file(root, name)
    if local.is_file():
        return local
    if name not in HF_REPOS:
        return None
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(HF_REPOS[name], HF_WEIGHTS_FILE)
    return Path(hit) if isinstance(hit, str) else None


def cache_dir(root: Path) -> Path:
    """Frozen-prefix caches kept between runs (``spamtune.cache_store``)."""
    return root / "cache"


def bases_dir(root: Path) -> Path:
    """Base weights that compact runs refer to, stored once by sha256 (``spamtune.bases``)."""
    return root / "bases"


def base_file(root: Path, sha256: str) -> Path:
    """Where the base of that sha256 is stored under a data root."""
    return bases_dir(root) / f"{sha256}.safetensors"


def select_by_prefix(entries: list, names: Iterable[str], name_of: Callable[[object], str], what: str, folder: Path, listing: str) -> list:
    """The entries of a stored kind (``what``: "prefix cache", "base") that ``names`` pick, each
    by a unique prefix of its name; one clear line for a name that picks none or several."""
    chosen: list = []
    for name in names:
        if not name:  # a script's unset variable: a mistake to say, not a name that matches nothing
            raise SpamtuneUsageError(f"an empty {what} name: name each one to remove (`{listing}` lists them)")
        matches = [entry for entry in entries if name_of(entry).startswith(name)]
        if not matches:
            raise SpamtuneError(f"no {what} named '{name}' in {folder}; see `{listing}`")
        if len(matches) > 1:
            raise SpamtuneUsageError(f"'{name}' names {len(matches)} {what}s; give more of the name")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen
