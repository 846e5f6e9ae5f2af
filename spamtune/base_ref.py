"""A base by its identity: the sha256 of its weights and the origin it can be made again from.

Kept apart from ``bases`` (which stores, hashes and rebuilds the weights themselves) so that
what only reads references, ``spamtune bases ls`` and the run listings, needs no PyTorch.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open

from spamtune.errors import SpamtuneError


@dataclass(frozen=True)
class BaseRef:
    """A base by hash, and where it came from, so that it can be found or made again:
    ``{"kind": "pretrained", "name": "gpt2-small"}``, ``{"kind": "random", "model": {...},
    "seed": 123}`` or ``{"kind": "file", "path": "..."}`` (a Hugging Face GPT-2 file)."""

    sha256: str
    origin: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BaseRef:
        try:
            sha, origin = data["sha256"], data.get("origin") or {}
        except (KeyError, TypeError):
            raise SpamtuneError("a base reference needs a sha256") from None
        if not is_sha256(sha):
            raise SpamtuneError(f"a base reference's sha256 must be 64 hex digits (got {sha!r})")
        if not isinstance(origin, dict):
            raise SpamtuneError(f"a base reference's origin must be a JSON object (got {origin!r})")
        return cls(sha, dict(origin))

    def describe(self) -> str:
        kind = self.origin.get("kind")
        if kind == "pretrained":
            return f"pretrained {self.origin.get('name')}"
        if kind == "random":
            return f"random init (seed {self.origin.get('seed')})"
        if kind == "file":
            return f"weights file {self.origin.get('path')}"
        return "unknown origin"


def recorded_origin(path: Path) -> dict:
    """The origin a stored base's file records in its header (the header alone is read, without
    PyTorch); empty when the file cannot be read."""
    try:
        with safe_open(str(path), framework="numpy") as f:  # "pt" would import torch
            origin = json.loads((f.metadata() or {}).get("origin", "{}"))
    except (SafetensorError, OSError, ValueError):
        return {}
    return origin if isinstance(origin, dict) else {}


def is_sha256(value) -> bool:
    """Whether ``value`` is a sha256 as spamtune writes one: 64 lowercase hex digits."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def folder_in_the_way(path: Path) -> bool:
    """Whether a folder stands where a base's file goes: no rename replaces it, and spamtune
    removes no folder it did not make (it may hold anything). A link is no obstacle: a rename
    replaces the link itself."""
    return path.is_dir() and not path.is_symlink()


def how_to_clear(path: Path) -> str:
    """What to do about a folder in a base's place, in words."""
    return f"{path} is a folder, which spamtune does not remove: move it away or remove it (rm -r {shlex.quote(str(path))})"
