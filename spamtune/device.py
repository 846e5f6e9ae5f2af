"""Where and in what precision to compute: CUDA, then Apple's MPS, then the CPU; fp32 or bf16.

``resolve_precision`` is the one place that decides what ``--precision auto`` means, for
training, evaluation and prediction alike; ``Precision`` is that decision made once, carrying
the context every forward pass runs in and the gradient scaler every caller uses.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from spamtune.errors import OptionError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# CPU features that run bf16 matrix products natively (AVX512-BF16, Intel AMX). Without them
# PyTorch emulates bf16 and autocast is slower than fp32, so auto stays fp32 there.
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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
            raise OptionError("device", f"{{option}} {name}: CUDA is not available in this PyTorch build or machine", exit_code=1)
        return torch.device(name)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise OptionError("device", "{option} mps: Apple's Metal backend is not available here", exit_code=1)
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise OptionError("device", f"unknown {{option}} '{name}'; choose one of: {', '.join(DEVICES)}", exit_code=1)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Linux: read from /proc/cpuinfo)."""
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in _NATIVE_BF16_FLAGS)
    except OSError:
        pass
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """The compute precision to use on ``device``.

    ``auto`` is bf16 autocast where the hardware runs it natively (CUDA GPUs with bf16, CPUs
    with AVX512-BF16 or AMX): on the real SMS data a from-scratch model trained in bf16
    reached the same test accuracy as in fp32 (README, "Precision"). Older CUDA GPUs get fp16,
    whose narrow range training makes safe with gradient scaling; everything else fp32.
    """
    if requested not in PRECISIONS:
        raise OptionError("precision", f"unknown {{option}} '{requested}'; choose one of: {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise OptionError("precision", f"{{option}} fp16 needs a CUDA device (this run uses {device.type}); use bf16 or fp32")
    if requested == "bf16":
        if device.type not in ("cpu", "cuda"):
            raise OptionError("precision", f"{{option}} bf16 is supported on cpu and cuda, not {device.type}; use fp32")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise OptionError("precision", "this GPU has no bf16 support; use {option} fp16 or fp32")
    return requested


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """A resolved precision (``fp32``, ``bf16`` or ``fp16``) on one device, decided once and
    passed down: ``forward_context()`` for every forward pass, ``scaler`` for every backward pass.

    The scaler is real only for fp16, whose narrow range needs the loss scaled; for the others
    it is disabled and passes losses and optimizer steps through unchanged, so callers never
    branch on the precision.
    """

    name: str
    device: torch.device
    scaler: torch.amp.GradScaler = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")

    @classmethod
    def resolve(cls, requested: str, device: torch.device) -> Precision:
        return cls(resolve_precision(requested, torch.device(device)), device)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return AUTOCAST_DTYPES.get(self.name)

    @contextlib.contextmanager
    def forward_context(self) -> Iterator[None]:
        """What a forward pass runs under: bf16/fp16 autocast (nothing for fp32), and on CUDA
        attention kernels that serve every sequence length at once.

        PyTorch may pick cuDNN's attention on Hopper GPUs. cuDNN builds a graph for each new
        shape, and messages come in every length: on an H200 the first pass over the SMS
        data spent 8.1 of its 10.3 s cache build there, and its calls cost ~200 us of host time
        each even once built, against ~10 us of GPU work. Flash and memory-efficient attention
        need no such build; the math kernel stays as the last resort.
        """
        with contextlib.ExitStack() as stack:
            if self.dtype is not None:
                stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
            if self.device.type == "cuda":
                stack.enter_context(_attention_without_cudnn())
            yield


def _attention_without_cudnn() -> contextlib.AbstractContextManager:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # PyTorch before 2.3 has no cuDNN attention to leave out
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    def __str__(self) -> str:
        return self.name
