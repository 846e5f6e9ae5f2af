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
import threading
from collections.abc import Callable, MutableMapping
from typing import TypeVar

T = TypeVar("T")

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = "PASSIVE"
SPIN_COUNT_VARIABLE = "GOMP_SPINCOUNT"
# libgomp spins about 100,000 times a millisecond: about 0.1 ms before a thread sleeps.
BRIEF_SPIN_COUNT = "10000"


def prefer_passive_waiting(environ: MutableMapping[str, str] = os.environ, *, brief_spin: bool = False) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless it is set already (the user's value wins).

    ``brief_spin``, for a service that answers one short request at a time: idle threads also
    spin about 0.1 ms before they sleep (``GOMP_SPINCOUNT``). One forward pass is a few hundred
    parallel regions a few microseconds apart; with no spin, each wakes the threads from sleep
    again, which made a short message on gpt2-small ~40% slower than with OpenMP's own default.
    An idle service still sleeps. It is not the default for training: there the spinning
    threads of two runs sharing the cores took the pair from 24 s to 48 s. Nothing is set
    when the user set either variable.

    Returns whether the policy in ``environ`` can still take effect in this process, i.e.
    PyTorch has not been imported yet.
    """
    users_choice = WAIT_POLICY_VARIABLE in environ or SPIN_COUNT_VARIABLE in environ
    environ.setdefault(WAIT_POLICY_VARIABLE, DEFAULT_WAIT_POLICY)
    if brief_spin and not users_choice:
        environ[SPIN_COUNT_VARIABLE] = BRIEF_SPIN_COUNT
    return "torch" not in sys.modules


def call_on_passing_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a thread of its own that ends with it; its result, or its exception.

    OpenMP keeps a pool of threads for every thread that ran parallel work, and once a process
    holds more pool threads than cores, libgomp cuts every spin short. A service that loads its
    model here and computes on one worker thread ends up with that worker's pool alone: the
    passing thread's pool goes when the thread ends.
    """
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed back to the calling thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="spamtune-load", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
