"""Where spamtune keeps things: one data root for downloads, prepared splits and runs.

The root is ``--data-dir`` if given, else ``$SPAMTUNE_HOME``, else ``./data``.
"""

from __future__ import annotations

import os
from pathlib import Path

from spamtune.errors import SpamtuneError

ENV_HOME = "SPAMTUNE_HOME"
SPLITS = ("train", "validation", "test")


def data_root(override: str | Path | None = None) -> Path:
    if override:
        return Path(override)
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME])
    return Path("data")


def sms_file(root: Path) -> Path:
    """Where ``spamtune download data`` puts the SMS Spam Collection."""
    return root / "sms_spam_collection" / "SMSSpamCollection"


def models_dir(root: Path) -> Path:
    return root / "models"


def split_file(root: Path, split: str) -> Path:
    return root / f"{split}.csv"


def labels_file(root: Path) -> Path:
    return root / "labels.json"


def runs_dir(root: Path) -> Path:
    return root / "runs"


def is_run_dir(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def latest_run(root: Path) -> Path:
    """The most recently written finished run under ``<root>/runs``."""
    base = runs_dir(root)
    runs = [p for p in base.iterdir() if is_run_dir(p)] if base.is_dir() else []
    if not runs:
        raise SpamtuneError(f"no fine-tuned model found in {base}; run `spamtune finetune` first")
    return max(runs, key=lambda p: (p / "model.safetensors").stat().st_mtime)
