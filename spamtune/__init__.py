"""spamtune: GPT-2 from scratch, fine-tuned into a spam classifier (the book's chapter 6 as a tool).

The public names are imported lazily, so ``import spamtune`` (and the CLI's start-up) does
not pay for PyTorch until a model is actually needed.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "GPTConfig": "spamtune.model",
    "GPTModel": "spamtune.model",
    "convert_to_classifier": "spamtune.model",
    "load_pretrained_weights": "spamtune.weights",
    "get_tokenizer": "spamtune.tokenizer",
    "SpamtuneError": "spamtune.errors",
    "SpamClassifier": "spamtune.infer",
    "Prediction": "spamtune.infer",
}

__all__ = [*_EXPORTS, "__version__"]


def __dir__() -> list[str]:
    """The public names (loaded lazily, so not yet in the module's namespace): what
    ``dir(spamtune)`` and editors' completion show."""
    return sorted(__all__)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'spamtune' has no attribute {name!r}")
