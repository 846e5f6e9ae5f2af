"""How a spamtune process waits for its CPU threads, so that it shares cores well.

PyTorch's CPU kernels run on an OpenMP thread pool. By default OpenMP lets an idle thread
spin (burn CPU while waiting for the next parallel region) for a while before it sleeps.
Alone on a machine that saves a little latency; beside anything else busy (a second
spamtune run, a mail server, a CI job) the spinning threads take the cores the others need,
and every process slows down. Measured on a 2-core machine with two tiny fine-tunes at once,
``OMP_WAIT_POLICY=PASSIVE`` (threads sleep when idle) took the pair from 4x slower than one
after the other to about even (figures in README, "Sharing cores").

OpenMP reads the variable once, when PyTorch loads it, so it must be set before
``import torch``. The ``spamtune`` command does that first thing (``spamtune.cli.main``), with
a short spin for training and for the service (``prefer_passive_waiting``); a user who sets
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` keeps their value. ``import spamtune`` changes nothing in
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
# About 10 µs: long enough to span the gap between two parallel regions of a training step.
TRAINING_SPIN_COUNT = "1000"


def prefer_passive_waiting(environ: MutableMapping[str, str] = os.environ, *, spin_count: str | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless it is set already (the user's value wins), and
    with ``spin_count`` let idle threads spin that long before they sleep (``GOMP_SPINCOUNT``).

    A spin pays where parallel regions come microseconds apart, each of which would otherwise
    wake the threads from sleep again (~50 µs here):

    - ``BRIEF_SPIN_COUNT`` (0.1 ms), for a service that answers one short request at a time:
      a forward pass is a few hundred regions, and without a spin a short message on
      gpt2-small was ~40% slower than with OpenMP's own default. An idle service still sleeps.
    - ``TRAINING_SPIN_COUNT`` (10 µs), for training: a step of the book's recipe is a few dozen
      regions, and its 655 steps took 10.6-11.4 s against 12.5-14.0 s without a spin. Longer
      spins cost runs that share the cores too much (two of them at once took 1.64x as long
      as one after the other with 0.1 ms); with 10 µs a pair at once is 14-17% slower than
      without a spin, still well under the time of one after the other (README, "Sharing cores").

    Nothing is set when the user set either variable. Returns whether the policy in
    ``environ`` can still take effect in this process, i.e. PyTorch has not been imported yet.
    """
    users_choice = WAIT_POLICY_VARIABLE in environ or SPIN_COUNT_VARIABLE in environ
    environ.setdefault(WAIT_POLICY_VARIABLE, DEFAULT_WAIT_POLICY)
    if spin_count is not None and not users_choice:
        environ[SPIN_COUNT_VARIABLE] = spin_count
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
