"""How a spamtune process waits for its CPU threads, so that it shares cores well.

PyTorch's CPU kernels run on an OpenMP thread pool. By default OpenMP lets an idle thread
spin (burn CPU while waiting for the next parallel region) for a while before it sleeps.
Alone on a machine that saves a little latency; beside anything else busy (a second
spamtune run, a mail server, a CI job) the spinning threads take the cores the others need,
and every process slows down. Measured on a 2-core machine with two tiny fine-tunes at once,
``OMP_WAIT_POLICY=PASSIVE`` (threads sleep when idle) took the pair from 4x slower than one
after the other to about even (figures in README, "Sharing cores").

OpenMP reads the variable once, when PyTorch loads it, so it must be set before
``import torch``. The ``spamtune`` command does that first thing (``spamtune.cli.main``); a
user who sets ``OMP_WAIT_POLICY`` keeps their value. ``import spamtune`` changes nothing in
the host process: a program that embeds the library and shares cores calls
``prefer_passive_waiting()`` before it imports torch, or sets the variable in its environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = "PASSIVE"


def prefer_passive_waiting(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless it is set already (the user's value wins).

    Returns whether the policy in ``environ`` can still take effect in this process, i.e.
    PyTorch has not been imported yet.
    """
    environ.setdefault(WAIT_POLICY_VARIABLE, DEFAULT_WAIT_POLICY)
    return "torch" not in sys.modules
