"""Work done behind the main thread at idle priority (spamtune.idle_work)."""

import os
import threading
import time

import pytest
import torch

from spamtune import idle_work
from spamtune.idle_work import IdleWork, WorkCancelled

needs_idle_priority = pytest.mark.skipif(not idle_work.idle_priority_available(), reason="no SCHED_IDLE here")


def recorder():
    """Items that note (name, thread, start, end) as they run."""
    log, lock = [], threading.Lock()

    def item(name, seconds=0.0):
        def run():
            start = time.perf_counter()
            time.sleep(seconds)
            with lock:
                log.append((name, threading.current_thread().name, start, time.perf_counter()))

        return run

    return log, item


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_stage_starts_once_every_item_before_it_is_done():
    log, item = recorder()
    work = IdleWork([[item("a1", 0.05), item("a2", 0.01), item("a3", 0.03)], [item("b1"), item("b2")], [item("c1")]]).start()
    work.finish()
    assert sorted(name for name, *_ in log) == ["a1", "a2", "a3", "b1", "b2", "c1"]
    ends = {name: end for name, _, _, end in log}
    starts = {name: start for name, _, start, _ in log}
    assert min(starts["b1"], starts["b2"]) >= max(ends["a1"], ends["a2"], ends["a3"])
    assert starts["c1"] >= max(ends["b1"], ends["b2"])
    assert work.done
    work.finish()  # idempotent
    assert len(log) == 6


@needs_idle_priority
def test_the_background_runs_at_idle_priority_with_one_thread_and_takes_the_smallest_first():
    seen, threads_before = [], torch.get_num_threads()

    def item(name):
        return lambda: seen.append((name, threading.current_thread().name, os.sched_getscheduler(0), torch.get_num_threads()))

    work = IdleWork([[item("largest"), item("middle"), item("smallest")]], name="idle-test").start()
    wait_until(lambda: len(seen) == 3)  # the main thread only waits: the background does it all
    work.finish()
    assert [name for name, *_ in seen] == ["smallest", "middle", "largest"]
    assert {(thread, policy, threads) for _, thread, policy, threads in seen} == {("idle-test", os.SCHED_IDLE, 1)}
    # The calling thread keeps its own priority and thread count.
    assert os.sched_getscheduler(0) != os.SCHED_IDLE and torch.get_num_threads() == threads_before


def test_finish_does_what_the_background_cannot(monkeypatch):
    monkeypatch.setattr(idle_work, "lower_own_priority", lambda: False)  # e.g. refused by the system
    log, item = recorder()
    IdleWork([[item("a"), item("b")], [item("c")]]).start().finish()
    assert [(name, thread) for name, thread, *_ in log] == [("a", "MainThread"), ("b", "MainThread"), ("c", "MainThread")]


class Exits:
    """A context manager for the work's exit stack that notes how it was left."""

    def __init__(self):
        self.left_with = "open"

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.left_with = kind
        return False


def test_an_items_error_reaches_finish_and_the_exit_stack_sees_it(monkeypatch):
    monkeypatch.setattr(idle_work, "lower_own_priority", lambda: False)
    log, item = recorder()

    def broken():
        raise ValueError("item failed")

    work = IdleWork([[item("a"), broken, item("c")], [item("d")]])
    exits = work.exit_stack.enter_context(Exits())
    with pytest.raises(ValueError, match="item failed"):
        work.start().finish()
    assert exits.left_with is ValueError
    assert [name for name, *_ in log] == ["a"]  # nothing after the failure, nothing of the next stage
    work.finish()  # ended: no second run, no second error


@needs_idle_priority
def test_cancel_stops_after_the_item_in_progress_and_leaves_nothing_running():
    release, started = threading.Event(), threading.Event()
    log, item = recorder()

    def blocking():
        started.set()
        release.wait(10)

    work = IdleWork([[item("x"), item("y"), blocking]], name="cancel-test")
    exits = work.exit_stack.enter_context(Exits())
    work.start()
    started.wait(10)
    threading.Timer(0.05, release.set).start()
    work.cancel()
    assert exits.left_with is WorkCancelled
    assert log == []  # the background takes the last item first; the other two never ran
    assert not any(t.name.startswith("cancel-test") for t in threading.enumerate())
    work.finish()  # ended by the cancel: nothing more runs
    assert log == []


def test_the_exit_stack_closes_normally_after_finish():
    work = IdleWork([[lambda: None]])
    closed = []
    work.exit_stack.callback(lambda: closed.append(True))
    work.start().finish()
    work.cancel()  # ended already: the stack is not closed again
    assert closed == [True]


@needs_idle_priority
def test_running_behind_while_the_background_thread_has_items_and_not_after():
    release = threading.Event()
    work = IdleWork([[release.wait]])
    assert not work.running_behind  # not started
    work.start()
    assert work.running_behind
    release.set()
    wait_until(lambda: not work.running_behind)
    work.finish()
    assert work.done and not work.running_behind


# --------------------------------------------------------------------------- several workers


def test_split_threads_gives_half_to_the_workers_and_one_each_on_two_cores():
    assert idle_work.split_threads(2) == (1, 1)  # as measured on two cores
    assert idle_work.split_threads(3) == (2, 1)
    assert idle_work.split_threads(16) == (8, 8)
    assert idle_work.split_threads(1) == (1, 1)  # nothing to share: the work stays behind at idle priority
    for threads in range(2, 65):
        steps, workers = idle_work.split_threads(threads)
        assert steps >= 1 and workers >= 1 and steps + workers == threads


def test_idle_work_needs_a_worker():
    with pytest.raises(ValueError, match="at least one worker"):
        IdleWork([[lambda: None]], workers=0)


@needs_idle_priority
def test_several_workers_run_every_item_once_and_a_stage_only_after_the_one_before():
    log, item = recorder()
    together = threading.Barrier(3, timeout=10)  # every worker holds an item of the first stage at once

    def first(name, seconds):
        run = item(name, seconds)
        return lambda: (together.wait(), run())

    stages = [
        [first("a1", 0.04), first("a2", 0.01), first("a3", 0.02)],
        [item(f"b{i}", 0.002 * i) for i in range(1, 9)],
        [item("c1"), item("c2")],
    ]
    work = IdleWork(stages, name="several", workers=3).start()
    wait_until(lambda: not work.running_behind)  # the workers do it all
    work.finish()
    names = [name for name, *_ in log]
    assert sorted(names) == sorted(["a1", "a2", "a3", *(f"b{i}" for i in range(1, 9)), "c1", "c2"])  # each once
    threads = {name: thread for name, thread, *_ in log}
    assert {threads[a] for a in ("a1", "a2", "a3")} == {"several-1", "several-2", "several-3"}
    starts = {name: start for name, _, start, _ in log}
    ends = {name: end for name, _, _, end in log}
    stage_of = {name: name[0] for name in names}
    for name in names:
        for before in names:
            if stage_of[before] < stage_of[name]:
                assert starts[name] >= ends[before], (before, name)
    assert work.done and not any(t.name.startswith("several") for t in threading.enumerate())


@pytest.mark.parametrize("workers", [1, 3])
def test_finish_does_what_several_workers_cannot(monkeypatch, workers):
    monkeypatch.setattr(idle_work, "lower_own_priority", lambda: False)
    log, item = recorder()
    IdleWork([[item("a"), item("b")], [item("c")]], workers=workers).start().finish()
    assert [(name, thread) for name, thread, *_ in log] == [("a", "MainThread"), ("b", "MainThread"), ("c", "MainThread")]


@needs_idle_priority
def test_an_error_on_one_of_several_workers_reaches_finish_and_stops_the_others():
    log, item = recorder()
    held = threading.Barrier(3, timeout=10)

    def broken():
        held.wait()
        raise ValueError("item failed on a worker")

    def slow(name):
        run = item(name, 0.2)  # still running when the error is known
        return lambda: (held.wait(), run())

    work = IdleWork([[*(item(f"a{i}") for i in range(6)), slow("s1"), slow("s2"), broken], [item("d")]], name="failing", workers=3)
    exits = work.exit_stack.enter_context(Exits())
    work.start()
    wait_until(lambda: not work.running_behind)  # every worker stopped: the error is known
    assert exits.left_with == "open"  # until finish
    with pytest.raises(ValueError, match="item failed on a worker"):
        work.finish()
    assert exits.left_with is ValueError  # closed as abandoned, not completed
    # The two items in progress beside the failure finished; nothing was taken after it.
    assert sorted(name for name, *_ in log) == ["s1", "s2"]
    assert {thread for _, thread, *_ in log} < {"failing-1", "failing-2", "failing-3"}
    work.finish()  # ended: no second run, no second error


@needs_idle_priority
def test_cancel_waits_for_every_worker():
    release = threading.Event()
    holding = threading.Barrier(4, timeout=10)  # three workers and this thread
    log, item = recorder()

    def blocking(name):
        run = item(name)

        def hold():
            holding.wait()
            release.wait(10)
            run()

        return hold

    work = IdleWork([[item("x"), item("y"), blocking("b1"), blocking("b2"), blocking("b3")]], name="cancel-all", workers=3)
    exits = work.exit_stack.enter_context(Exits())
    work.start()
    holding.wait()  # each worker is in an item
    threading.Timer(0.05, release.set).start()
    work.cancel()
    assert exits.left_with is WorkCancelled
    assert not work.running_behind
    assert not any(t.name.startswith("cancel-all") for t in threading.enumerate())  # joined, all three
    assert sorted(name for name, *_ in log) == ["b1", "b2", "b3"]  # the items in progress ended; x and y never ran


@needs_idle_priority
def test_running_behind_while_any_worker_is_alive():
    release = threading.Event()
    log, item = recorder()
    work = IdleWork([[item("quick"), release.wait]], name="behind", workers=2).start()
    wait_until(lambda: log)  # one worker ran the quick item and, with nothing left, ended
    wait_until(lambda: sum(t.name.startswith("behind") for t in threading.enumerate()) == 1)
    assert work.running_behind  # the other still holds an item
    release.set()
    wait_until(lambda: not work.running_behind)
    work.finish()
    assert work.done


def test_run_on_threads_runs_every_item_now_on_the_caller_and_its_workers_each_with_one_openmp_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    both, met, seen, lock = threading.Barrier(2, timeout=10), threading.Event(), [], threading.Lock()

    def item(stage):
        def run():
            if stage == 0 and not met.is_set():
                both.wait()  # the first two items: one on each thread, at the same time
                met.set()
            with lock:
                seen.append((stage, threading.current_thread().name, torch.get_num_threads()))

        return run

    try:
        idle_work.run_on_threads([[item(0) for _ in range(6)], [item(1) for _ in range(3)]], 2, "spamtune-test")
        assert torch.get_num_threads() == 2  # the caller's count, back
    finally:
        torch.set_num_threads(before)
    assert sorted(stage for stage, _, _ in seen) == [0] * 6 + [1] * 3
    assert [stage for stage, _, _ in seen] == sorted(stage for stage, _, _ in seen)  # the second stage after the first
    assert {name for _, name, _ in seen} == {threading.main_thread().name, "spamtune-test"}
    assert {threads for _, _, threads in seen} == {1}
    assert not any(t.name == "spamtune-test" for t in threading.enumerate())  # the worker ended with the work


def test_run_on_one_thread_runs_every_item_here():
    seen = []
    idle_work.run_on_threads([[lambda: seen.append(threading.current_thread().name)] * 3], 1, "spamtune-test")
    assert seen == [threading.main_thread().name] * 3
