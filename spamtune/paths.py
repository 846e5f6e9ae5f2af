"""Where spamtune keeps things: one data root for downloads, prepared splits and runs.

The root is ``--data-dir`` if given, else ``$SPAMTUNE_HOME``, else ``./data``.
"""

from __future__ import annotations

import os
from pathlib import Path

from spamtune.errors import SpamtuneError
from spamtune.runs import WEIGHTS_FILE, is_classifier_dir, is_finished

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


def latest_run(root: Path) -> Path:
    """The run ``evaluate`` and ``predict`` use by default: the newest finished run under
    ``<root>/runs``, else the newest folder with weights and config (a run still training or
    stopped, or one saved without training). Folders without weights are never picked, so a
    run that has just started does not hide the previous one. Newest is by the weights' mtime."""
    base = runs_dir(root)
    runs = []
    if base.is_dir():
        for p in base.iterdir():
            if not is_classifier_dir(p):
                continue
            try:
                written = (p / WEIGHTS_FILE).stat().st_mtime
            except OSError:  # removed meanwhile
                continue
            runs.append((is_finished(p), written, p.name, p))
    if not runs:
        raise SpamtuneError(f"no fine-tuned model found in {base}; run `spamtune finetune` first")
    return max(runs)[-1]


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
