"""Work done with what the process leaves of the CPU, and finished when its result is needed.

A first training run keeps every core busy while it builds the frozen-prefix cache, then runs
training steps. Work the steps do not need until they are over (the test split's cached
states, read once at the end) can run beside them. ``IdleWork`` runs it on background worker
threads at the scheduler's idle priority (``SCHED_IDLE`` on Linux): such a thread gets a core
only when no other thread of the machine wants it, so it takes no core from the others. Steps
on every core leave them little (their OpenMP threads sleep only between products), so the
training loop gives the workers cores of their own while ``running_behind`` says they are
working: ``split_threads`` shares a run's threads between the steps and the workers
(``spamtune.train.threads_for_steps``). ``finish`` then does what is left on the calling thread
too, at full priority, and waits for every worker's last item.

Items come in stages: an item starts only once every item of the earlier stages is done (the
cache build's second pass reads the keys and values its first pass keeps). Every item runs with
one OpenMP thread, on whichever thread takes it and however many workers there are, so that its
result does not depend on who computed it: a run is the same run every time.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from collections.abc import Callable, Iterator


class WorkCancelled(Exception):
    """Given to the exit callbacks of work that was stopped before it was done."""


def split_threads(threads: int) -> tuple[int, int]:
    """How a run's ``threads`` are shared while work runs behind its training steps: (threads
    for the steps, background workers). Half to the workers (at least one), the rest to the steps.

    On two cores that is one each, as measured there: steps on both left the idle-priority
    thread little (the book's recipe in fp32 waited 4.6 s for the test split's states), and with
    a core each the states were ready before the steps ended. On a 16-core Xeon the steps of the
    same recipe took 6.4 s on 15 threads (~9.8 ms a step, ~12.5 on 2 cores: a step's 8 rows gain
    little from more threads), and the run then waited 2.6 s for the states of one background
    thread; the cores the steps barely use compute them faster on several workers. Not measured
    on many cores since.
    """
    workers = max(1, threads // 2)
    return max(1, threads - workers), workers


class IdleWork:
    """Stages of items run in the background at idle priority until ``finish`` or ``cancel``.

    ``workers`` background threads take the items (``split_threads`` says how many a run gives).

    ``exit_stack`` holds what the work needs until it ends (packed weights, a temporary file):
    closed normally after ``finish`` has run every item, or with ``WorkCancelled`` by ``cancel``
    and by ``finish`` when an item failed, so that a context manager pushed there can tell
    completion from abandonment (``fsutil.atomic_path`` renames its file or removes it).
    """

    def __init__(self, stages: list[list[Callable[[], None]]], name: str = "spamtune-idle", workers: int = 1, *, idle: bool = True):
        if workers < 1:
            raise ValueError(f"IdleWork needs at least one worker, got {workers}")
        self._left = [collections.deque(items) for items in stages]  # not yet taken, per stage
        self._stage_sizes = [len(items) for items in stages]
        self._stage_done = [0] * len(stages)
        self._error: BaseException | None = None
        self._stopped = False
        self._ended = False
        self._state = threading.Condition()
        self._name = name
        self._workers = workers
        self._idle = idle  # False: the workers keep the caller's priority (``run_on_threads``)
        self._threads: list[threading.Thread] = []
        self.exit_stack = contextlib.ExitStack()

    @property
    def done(self) -> bool:
        return self._ended

    @property
    def running_behind(self) -> bool:
        """Whether a background worker is still working (each stops when no item is left)."""
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> IdleWork:
        """Start taking items on the background workers (named ``name``, or ``name-1``,
        ``name-2``... when there are several); returns this work."""
        names = [self._name] if self._workers == 1 else [f"{self._name}-{i + 1}" for i in range(self._workers)]
        self._threads = [threading.Thread(target=self._background, name=name, daemon=True) for name in names]
        for thread in self._threads:
            thread.start()
        return self

    def finish(self) -> None:
        """Run what is left here as well, wait for every background worker, and close the exit
        stack; re-raise an item's error, from whichever thread (after closing the stack as
        cancelled). Idempotent."""
        if self._ended:
            return
        try:
            with _one_openmp_thread():
                self._work()
            self._join()
            if self._error is not None:
                raise self._error
        except BaseException as exc:
            self._stop()
            self._end(exc)
            raise
        self._end(None)

    def cancel(self) -> None:
        """Stop after the items in progress, wait for them (every worker), and close the exit
        stack as cancelled."""
        if not self._ended:
            self._stop()
            self._end(WorkCancelled())

    def _stop(self) -> None:
        with self._state:
            self._stopped = True
            self._state.notify_all()
        self._join()

    def _join(self) -> None:
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def _end(self, error: BaseException | None) -> None:
        self._ended = True
        self._left = []  # what the items hold (the cache build's kept keys and values) can go
        if error is None:
            self.exit_stack.close()
        else:
            self.exit_stack.__exit__(type(error), error, error.__traceback__)

    def _background(self) -> None:
        if self._idle and not lower_own_priority():
            return  # at full priority it would slow what it should only fill in for: ``finish`` does it all
        # One OpenMP thread also keeps a full-priority core from waiting for this one in a parallel region.
        with _one_openmp_thread():
            self._work(from_back=True)

    def _work(self, from_back: bool = False) -> None:
        """Take and run items until none is left (or one failed, here or on another thread). The
        background workers take each stage's items from its end, ``finish`` from its start:
        given the largest first, the items the workers still hold when ``finish`` runs out are
        small ones."""
        while (taken := self._take(from_back)) is not None:
            stage, item = taken
            try:
                item()
            except BaseException as exc:  # noqa: BLE001 - handed to ``finish``
                with self._state:
                    self._error = self._error or exc
                    self._state.notify_all()
                return
            with self._state:
                self._stage_done[stage] += 1
                self._state.notify_all()

    def _take(self, from_back: bool) -> tuple[int, Callable[[], None]] | None:
        with self._state:
            while True:
                stage = next((s for s, left in enumerate(self._left) if left), None)
                if self._stopped or self._error is not None or stage is None:
                    return None
                if all(self._stage_done[s] == self._stage_sizes[s] for s in range(stage)):
                    left = self._left[stage]
                    return stage, (left.pop() if from_back else left.popleft())
                self._state.wait()


def run_on_threads(stages: list[list[Callable[[], None]]], threads: int, name: str) -> None:
    """Run ``stages`` now on ``threads`` threads: this one and ``threads - 1`` workers at its
    priority, each item with one OpenMP thread, as ``IdleWork`` runs its own. What an item
    computes then does not depend on the thread count: PyTorch's CPU products round differently
    on one thread than on several, so a prefix cache built by a run on one thread and one on
    two gave runs 1e-4 apart in loss, whichever later run read it."""
    work = IdleWork(stages, name=name, workers=max(1, threads - 1), idle=False)
    if threads > 1:
        work.start()
    work.finish()


@contextlib.contextmanager
def _one_openmp_thread() -> Iterator[None]:
    """The calling thread's PyTorch operations use one OpenMP thread, then its count is restored."""
    import torch  # spamtune.cli sets the threads' wait policy before torch is imported

    torch.ones(2).sum()  # PyTorch sets a new thread's count at its first parallel operation: past that
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def idle_priority_available() -> bool:
    """Whether this platform has an idle scheduling priority for single threads (Linux)."""
    return hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_setscheduler")


def lower_own_priority() -> bool:
    """Put the calling thread at the idle scheduling priority (``SCHED_IDLE``); False where it
    is not available or not allowed. An unprivileged thread cannot raise it back."""
    if not idle_priority_available():
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread alone
        return True
    except OSError:
        return False
