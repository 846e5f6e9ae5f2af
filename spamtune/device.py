"""Choosing where to compute: CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import torch

from spamtune.errors import SpamtuneError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpamtuneError(f"--device {name}: CUDA is not available in this PyTorch build or machine")
        return torch.device(name)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise SpamtuneError("--device mps: Apple's Metal backend is not available here")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise SpamtuneError(f"unknown device '{name}'; choose one of: {', '.join(DEVICES)}")
