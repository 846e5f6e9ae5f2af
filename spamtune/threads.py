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
a short spin for the service (``prefer_passive_waiting``); ``finetune`` and ``sweep`` choose
theirs once their options are read, still before torch loads (``cli.common.choose_training_spin``:
10 µs, or 1 ms where ``CoreWatch`` can act); a user who sets
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` keeps their value. ``import spamtune`` changes nothing in
the host process: a program that embeds the library and shares cores calls
``prefer_passive_waiting()`` before it imports torch, or sets the variable in its environment.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Collection, MutableMapping
from typing import TypeVar

T = TypeVar("T")

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = "PASSIVE"
SPIN_COUNT_VARIABLE = "GOMP_SPINCOUNT"
# libgomp spins about 100,000 times a millisecond: about 0.1 ms before a thread sleeps.
BRIEF_SPIN_COUNT = "10000"
# About 10 µs: long enough to span the gap between two parallel regions of a training step.
TRAINING_SPIN_COUNT = "1000"
# About 1 ms: long enough to span the Python between two parallel regions of a training step
# too, for a run that gives cores back when other processes want them (``CoreWatch``).
LONE_SPIN_COUNT = "100000"

_spin_chosen_here: str | None = None  # the spin this process set for itself, if any


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
    - ``LONE_SPIN_COUNT`` (1 ms), for a run whose steps give the same numbers on any thread
      count, and so can drop to one thread while other processes want the cores
      (``CoreWatch``): its threads then span a step's Python between regions without sleeping.

    Nothing is set when the user set either variable. Returns whether the policy in
    ``environ`` can still take effect in this process, i.e. PyTorch has not been imported yet.
    """
    global _spin_chosen_here
    users_choice = WAIT_POLICY_VARIABLE in environ or SPIN_COUNT_VARIABLE in environ
    environ.setdefault(WAIT_POLICY_VARIABLE, DEFAULT_WAIT_POLICY)
    in_time = "torch" not in sys.modules
    if spin_count is not None and not users_choice:
        environ[SPIN_COUNT_VARIABLE] = spin_count
        if in_time and environ is os.environ:
            _spin_chosen_here = spin_count
    return in_time


def spins_long() -> bool:
    """Whether this process chose ``LONE_SPIN_COUNT`` for its OpenMP threads before torch
    loaded: its training steps must then leave the cores to other processes that want them
    (``CoreWatch``), since spinning threads would take those cores from them."""
    return _spin_chosen_here == LONE_SPIN_COUNT


def machine_busy_seconds(stat_file: str = "/proc/stat", cpus: Collection[int] | None = None) -> float | None:
    """CPU seconds the cores this process may run on (``cpus``: its affinity mask, by default)
    have spent running anything (user, nice, system and interrupts, not idle, waiting on I/O or
    stolen by a hypervisor) since boot; None where the kernel does not say (not Linux).

    Only those cores: in a container pinned to a few cores of a large machine, the machine's
    other cores are busy with work that does not compete for these."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ()
    wanted = {f"cpu{n}" for n in cpus}
    busy = 0
    try:
        with open(stat_file, encoding="ascii") as f:
            for line in f:
                if not line.startswith("cpu"):  # the per-core lines come first, then long ones
                    break
                name, *fields = line.split()
                if name in wanted:
                    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
                    busy += user + nice + system + irq + softirq
                    wanted.discard(name)
    except (OSError, ValueError):
        return None
    return None if wanted or not cpus else busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds this process (all its threads) has run."""
    times = os.times()
    return times.user + times.system


class CoreWatch:
    """How many cores other processes want: the CPU time the machine spent busy less this
    process's own, averaged over each half second.

    A run whose OpenMP threads spin for a millisecond between parallel regions keeps every core
    it has threads for, even between regions; beside another busy process the two then fight
    for the cores and both slow down severalfold (on two cores, two such runs at once took over
    2.7 times as long as one after the other). Polled before each training step, the watch lets
    such a run leave the cores others use to them (``train.threads_for_steps``) and take them
    back once others have used less for a second. A core counts as wanted from 0.35 of one,
    above what the kernel's tick sampling shows of an idle machine (within ±0.16 of a core over
    a quarter second, measured with a run going).

    Niced processes (``nice -n 19`` batch jobs) count as any other: a nice value does not keep
    them off a run's cores. The scheduler (EEVDF, Linux 6.6 on) lets a task it has started run
    out a slice of a few milliseconds, nice 19 or not, and with autogroup on (the default of many
    distributions' kernels) a job started in another session gets an equal share of the cores
    whatever its nice value. Either way one of a step's threads waits at every parallel region
    for the other. On the 2-core EPYC (Linux 6.18, autogroup on), an epoch of the book's recipe
    from its kept cache took 2.5 s alone; beside one spinning ``nice -n 19`` process it took
    26-43 s on two threads when the process was started in the run's own session, and 15-60 s
    from another session, against 3.4-4.6 s with the core left to it."""

    PERIOD_S = 0.5
    BUSY_CORES = 0.35
    QUIET_PERIODS = 2

    def __init__(
        self,
        machine_busy: Callable[[], float | None] = machine_busy_seconds,
        own_cpu: Callable[[], float] = own_cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``machine_busy()``: the cores' busy CPU seconds; ``own_cpu()``: this process's."""
        self._machine_busy, self._own_cpu, self._clock = machine_busy, own_cpu, clock
        self._since, self._machine, self._own = clock(), machine_busy(), own_cpu()
        self._lower_periods = 0
        self.cores_for_others = 0

    @property
    def working(self) -> bool:
        """Whether the machine reports its busy time (else others are never seen)."""
        return self._machine is not None

    def poll(self) -> int:
        """The cores to leave to other processes, as of the last whole period: at once as many
        as they use, fewer only after ``QUIET_PERIODS`` periods in a row of less."""
        now = self._clock()
        if self._machine is None or now - self._since < self.PERIOD_S:
            return self.cores_for_others
        machine, own = self._machine_busy(), self._own_cpu()
        if machine is None:
            self._machine, self.cores_for_others = None, 0
            return 0
        others = ((machine - self._machine) - (own - self._own)) / (now - self._since)
        self._since, self._machine, self._own = now, machine, own
        wanted = math.ceil(others - self.BUSY_CORES) if others > self.BUSY_CORES else 0
        if wanted >= self.cores_for_others:
            self.cores_for_others, self._lower_periods = wanted, 0
        else:
            self._lower_periods += 1
            if self._lower_periods >= self.QUIET_PERIODS:
                self.cores_for_others, self._lower_periods = wanted, 0
        return self.cores_for_others


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
