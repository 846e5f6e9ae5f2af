"""GPT-2's named sizes and the other spellings they go by, without torch: the CLI checks
``--model`` with them while it parses, before a command loads torch (``finetune`` chooses how
its threads wait first, which OpenMP reads when torch loads). ``spamtune.model.MODEL_SIZES``
gives each name its shape; a test checks that the two list the same names."""

from __future__ import annotations

import re
from pathlib import Path

from spamtune.errors import OptionError

MODEL_NAMES = ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny")
PRETRAINED_SIZES = ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl")
MODEL_ALIASES = {
    "gpt2": "gpt2-small",
    "small": "gpt2-small",
    "124m": "gpt2-small",
    "medium": "gpt2-medium",
    "355m": "gpt2-medium",
    "large": "gpt2-large",
    "774m": "gpt2-large",
    "xl": "gpt2-xl",
    "1558m": "gpt2-xl",
    "1.5b": "gpt2-xl",
}


def names_config_file(spec: str) -> bool:
    """Whether a ``--model`` value is a JSON config file's path rather than a named size: it ends
    in ``.json``, or a file of that name is there."""
    return spec.endswith(".json") or Path(spec).is_file()


def canonical_model_name(name: str) -> str:
    """``gpt2``/``124M``/``GPT2-Small`` -> ``gpt2-small``; unknown names list the valid ones."""
    key = name.strip().lower()
    key = re.sub(r"\s*\((\d+m)\)$", "", key)  # "gpt2-small (124M)", the book's spelling
    key = MODEL_ALIASES.get(key, key)
    if key not in MODEL_NAMES:
        valid = ", ".join(list(MODEL_NAMES) + ["gpt2", "124M", "355M", "774M", "1558M"])
        raise OptionError("model", f"unknown {{option}} '{name}'; choose one of: {valid}, or a JSON config file")
    return key
