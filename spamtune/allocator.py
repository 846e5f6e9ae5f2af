"""How a training process hands freed memory back to the system (glibc's malloc).

PyTorch's CPU tensors come from ``malloc``. glibc serves a large request with a fresh ``mmap``
and unmaps it on ``free``; it raises that size threshold as it sees large blocks freed, and
gives the top of its heap back to the system once more than twice the threshold is free there.
A training step allocates and frees the same tens of megabytes every time (the trainable
weights' gradients, the batch's activations), so depending on the order in which those
thresholds happen to move, a run either reuses its memory or has the kernel hand it fresh,
zeroed pages again at every step. Measured on the book's recipe run again from its kept cache
(2-core EPYC): 270,000 to 680,000 page faults and 14.3 to 16.0 s, against 130,000 and 14.2 to
14.4 s with the thresholds fixed as below.

``keep_freed_memory`` fixes them: blocks up to 32 MiB (glibc's largest mmap threshold) come
from the heap, and freed heap memory stays with the process for the next step. The process's
resident size then stays at its peak, which for a training run it reaches at every step anyway.
The ``spamtune`` command sets it for ``finetune`` and ``sweep``; a user's own malloc settings
(``GLIBC_TUNABLES``, ``MALLOC_*_``) win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
LARGEST_MMAP_THRESHOLD = 32 << 20  # glibc refuses more (half its 64 MiB heap size) on 64-bit


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Have glibc keep freed memory for reuse (see the module's text); whether it was set.
    Nothing is done off Linux, without glibc, or when the user set malloc's own variables."""
    if not sys.platform.startswith("linux") or users_malloc_settings(environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success. The trim threshold is an int here: "never" is its largest value.
    return bool(mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def users_malloc_settings(environ: Mapping[str, str]) -> bool:
    return "glibc.malloc" in environ.get("GLIBC_TUNABLES", "") or any(name.startswith("MALLOC_") for name in environ)
