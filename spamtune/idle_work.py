"""Work done with what the process leaves of the CPU, and finished when its result is needed.

A first training run keeps both cores of a small machine busy while it builds the frozen-prefix
cache, then runs training steps. Work the steps do not need until they are over (the test
split's cached states, read once at the end) can run beside them. ``IdleWork`` runs it on a
background thread at the scheduler's idle priority (``SCHED_IDLE`` on Linux): that thread gets a
core only when no other thread of the machine wants it, so it takes no core from the others.
Steps on every core leave it little (their second OpenMP thread sleeps only between products),
so the training loop gives it a core of its own while ``running_behind`` says it is working
(``spamtune.train.threads_for_steps``). ``finish`` then does what is left on the calling thread
too, at full priority, and waits for the background thread's last item.

Items come in stages: an item starts only once every item of the earlier stages is done (the
cache build's second pass reads the keys and values its first pass keeps). Every item runs with
one OpenMP thread, on either thread, so that its result does not depend on which one took it:
a run is the same run every time.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from collections.abc import Callable, Iterator


class WorkCancelled(Exception):
    """Given to the exit callbacks of work that was stopped before it was done."""


class IdleWork:
    """Stages of items run in the background at idle priority until ``finish`` or ``cancel``.

    ``exit_stack`` holds what the work needs until it ends (packed weights, a temporary file):
    closed normally after ``finish`` has run every item, or with ``WorkCancelled`` by ``cancel``
    and by ``finish`` when an item failed, so that a context manager pushed there can tell
    completion from abandonment (``fsutil.atomic_path`` renames its file or removes it).
    """

    def __init__(self, stages: list[list[Callable[[], None]]], name: str = "spamtune-idle"):
        self._left = [collections.deque(items) for items in stages]  # not yet taken, per stage
        self._stage_sizes = [len(items) for items in stages]
        self._stage_done = [0] * len(stages)
        self._error: BaseException | None = None
        self._stopped = False
        self._ended = False
        self._state = threading.Condition()
        self._name = name
        self._thread: threading.Thread | None = None
        self.exit_stack = contextlib.ExitStack()

    @property
    def done(self) -> bool:
        return self._ended

    @property
    def running_behind(self) -> bool:
        """Whether the background thread is still working (it stops when no item is left)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> IdleWork:
        """Start taking items on the background thread; returns this work."""
        self._thread = threading.Thread(target=self._background, name=self._name, daemon=True)
        self._thread.start()
        return self

    def finish(self) -> None:
        """Run what is left here as well, wait for the background thread, and close the exit
        stack; re-raise an item's error (after closing the stack as cancelled). Idempotent."""
        if self._ended:
            return
        try:
            with _one_openmp_thread():
                self._work()
            if self._thread is not None:
                self._thread.join()
            if self._error is not None:
                raise self._error
        except BaseException as exc:
            self._stop()
            self._end(exc)
            raise
        self._end(None)

    def cancel(self) -> None:
        """Stop after the item in progress, wait for it, and close the exit stack as cancelled."""
        if not self._ended:
            self._stop()
            self._end(WorkCancelled())

    def _stop(self) -> None:
        with self._state:
            self._stopped = True
            self._state.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _end(self, error: BaseException | None) -> None:
        self._ended = True
        self._left = []  # what the items hold (the cache build's kept keys and values) can go
        if error is None:
            self.exit_stack.close()
        else:
            self.exit_stack.__exit__(type(error), error, error.__traceback__)

    def _background(self) -> None:
        if not lower_own_priority():
            return  # at full priority it would slow what it should only fill in for: ``finish`` does it all
        # One OpenMP thread also keeps a full-priority core from waiting for this one in a parallel region.
        with _one_openmp_thread():
            self._work(from_back=True)

    def _work(self, from_back: bool = False) -> None:
        """Take and run items until none is left. The background thread takes each stage's items
        from its end, ``finish`` from its start: given the largest first, the item the
        background still holds when ``finish`` runs out is a small one."""
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
