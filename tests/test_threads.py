"""The OpenMP wait policy: set by the spamtune command before torch loads, never over the
user's value, and left alone by ``import spamtune``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO
from spamtune.errors import SpamtuneError
from spamtune.threads import CoreWatch, call_on_passing_thread, machine_busy_seconds, prefer_passive_waiting

# Runs an entry point in a fresh interpreter, then reports the policy and whether torch loaded.
# (At exit: the command ends the process itself once its exit callbacks have run.)
PROBE = """
import atexit, os, runpy, sys
atexit.register(lambda: print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"), "torch" in sys.modules))
sys.argv = ["spamtune", *{args!r}]
{entry}
"""
ENTRIES = {
    "console script": "from spamtune.entry import main; main()",
    "python -m spamtune": "runpy.run_module('spamtune', run_name='__main__', alter_sys=True)",
    "import spamtune": "import spamtune; from spamtune import GPTConfig, SpamClassifier",
}


def probe(entry: str, args: tuple[str, ...] = ("--version",), *, stopped: bool = False, **env: str) -> str:
    """The probe's line; ``stopped``: the command is to end with one error line (exit 1 or 2),
    as a training command does on a data root with no splits, once it has loaded torch."""
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "WORLD_SIZE")}
    environ.update(env, PYTHONPATH=str(REPO))
    code = PROBE.format(entry=ENTRIES[entry], args=list(args))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)
    if stopped:
        assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr
    else:
        assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


@pytest.mark.parametrize("entry", ["console script", "python -m spamtune"])
def test_the_command_sets_passive_before_torch_loads(entry):
    assert probe(entry) == "PASSIVE None False"


@pytest.mark.parametrize("entry", ["console script", "python -m spamtune"])
def test_the_users_policy_wins(entry):
    assert probe(entry, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE None False"


@pytest.mark.parametrize("entry", ["console script", "python -m spamtune"])
def test_serve_also_spins_briefly_unless_the_user_chose(entry):
    assert probe(entry, ("serve", "--help")) == "PASSIVE 10000 False"
    assert probe(entry, ("serve", "--help"), OMP_WAIT_POLICY="PASSIVE") == "PASSIVE None False"
    assert probe(entry, ("serve", "--help"), GOMP_SPINCOUNT="0") == "PASSIVE 0 False"
    assert probe(entry, ("predict", "--help")) == "PASSIVE None False"


@pytest.mark.parametrize("entry", ["console script", "python -m spamtune"])
def test_training_chooses_its_spin_once_its_options_are_read(entry):
    for command in ("finetune", "sweep"):
        assert probe(entry, (command, "--help")) == "None None False"


@pytest.mark.parametrize(
    ("options", "env", "spin"),
    [
        ((), {}, "100000"),  # the book's recipe: its steps can drop to one thread (CoreWatch)
        (("--pooling", "last", "--trainable", "last-1-blocks"), {}, "100000"),
        (("--trainable", "last-2-blocks"), {}, "1000"),
        (("--trainable", "lora"), {}, "1000"),
        (("--pooling", "mean"), {}, "1000"),
        (("--no-shortcuts",), {}, "1000"),
        (("--device", "cuda"), {}, "1000"),
        ((), {"WORLD_SIZE": "2"}, "1000"),  # a rank started by torchrun
        ((), {"GOMP_SPINCOUNT": "0"}, "0"),
        ((), {"OMP_WAIT_POLICY": "ACTIVE"}, "None"),
    ],
)
@pytest.mark.parametrize("command", ["finetune", "sweep"])
def test_training_spins_long_only_where_its_steps_can_give_the_cores_back(tmp_path, command, options, env, spin):
    """The spin is chosen from the parsed options before torch loads; the run then stops at
    its missing splits (torch loaded by then), and the probe reads the environment at exit.
    A sweep (here of two learning rates) spins long only if every combination may."""
    lrs = ("--lr", "1e-4,5e-4") if command == "sweep" else ()
    if command == "sweep" and options == ("--no-shortcuts",):  # a sweep's flags take values
        options = ("--shortcuts", "false")
    args = (command, "--model", "tiny", "--weights", "random", "--data-dir", str(tmp_path), *lrs, *options)
    policy, spin_count, torch_loaded = probe("console script", args, stopped=True, **env).split()
    assert spin_count == spin and torch_loaded == "True"


@pytest.mark.parametrize(("trainable", "spin"), [("last-block,last-1-block", "100000"), ("last-block,last-2-blocks", "1000")])
def test_a_sweep_spins_long_only_if_every_combination_may(tmp_path, trainable, spin):
    args = ("sweep", "--model", "tiny", "--weights", "random", "--trainable", trainable, "--data-dir", str(tmp_path))
    assert probe("console script", args, stopped=True).split() == ["PASSIVE", spin, "True"]


def test_a_resumed_run_spins_briefly(tmp_path):
    args = ("finetune", "--resume", "--data-dir", str(tmp_path))
    assert probe("console script", args, stopped=True).split()[:2] == ["PASSIVE", "1000"]


def test_importing_the_library_changes_nothing():
    assert probe("import spamtune") == "None None True"


def test_prefer_passive_waiting_says_whether_it_is_in_time():
    environ: dict[str, str] = {}
    assert prefer_passive_waiting(environ) is ("torch" not in sys.modules)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    environ = {"OMP_WAIT_POLICY": "active"}
    prefer_passive_waiting(environ)
    assert environ == {"OMP_WAIT_POLICY": "active"}


def test_a_spin_only_when_asked_and_the_user_set_neither():
    environ: dict[str, str] = {}
    prefer_passive_waiting(environ, spin_count="10000")
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}
    environ = {"GOMP_SPINCOUNT": "500"}
    prefer_passive_waiting(environ, spin_count="10000")
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "500"}
    environ = {"OMP_WAIT_POLICY": "PASSIVE"}
    prefer_passive_waiting(environ, spin_count="1000")
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_call_on_passing_thread_returns_and_raises_on_the_caller():
    main = threading.get_ident()
    ran_on: list[int] = []

    def work() -> int:
        ran_on.append(threading.get_ident())
        return 42

    assert call_on_passing_thread(work) == 42
    assert ran_on and ran_on[0] != main

    def fail() -> None:
        raise SpamtuneError("no such run")

    with pytest.raises(SpamtuneError, match="no such run"):
        call_on_passing_thread(fail)
    assert all(t.name != "spamtune-load" for t in threading.enumerate())  # joined: its OpenMP pool went with it


class FakeMachine:
    """A machine's busy CPU time, this process's share of it, and the clock a test moves."""

    def __init__(self):
        self.now, self.busy, self.own = 0.0, 5000.0, 0.0  # what ran since boot

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += seconds * own_cores
        self.busy += seconds * (own_cores + other_cores)

    def watch(self) -> CoreWatch:
        return CoreWatch(lambda: self.busy, lambda: self.own, lambda: self.now)


def test_the_watch_leaves_others_the_cores_they_use_and_takes_them_back_after_a_quieter_second():
    machine = FakeMachine()
    watch = machine.watch()
    machine.run(0.6, own_cores=2.0, other_cores=0.1)  # alone, but for the kernel's bits
    assert watch.working and watch.poll() == 0
    machine.run(0.3, own_cores=1.0, other_cores=1.0)  # another process starts...
    assert watch.poll() == 0  # ... but half a second has not passed since the last look
    machine.run(0.3, own_cores=1.0, other_cores=1.0)
    assert watch.poll() == 1
    machine.run(0.6, own_cores=12.0, other_cores=3.2)  # more of them, on a bigger machine: at once
    assert watch.poll() == 3
    machine.run(0.6, own_cores=13.0, other_cores=0.0)  # they stopped: one quieter period is not enough
    assert watch.poll() == 3
    machine.run(0.6, own_cores=13.0, other_cores=1.0)  # a second quieter one: what it wants
    assert watch.poll() == 1
    machine.run(0.6, own_cores=13.0, other_cores=0.2)
    assert watch.poll() == 1
    machine.run(0.6, own_cores=13.0, other_cores=0.2)
    assert watch.poll() == 0
    machine.run(0.6, own_cores=2.0, other_cores=0.5)
    assert watch.poll() == 1


def test_a_machine_that_does_not_report_its_busy_time_never_looks_busy():
    watch = CoreWatch(lambda: None, lambda: 0.0, iter(range(0, 100, 1)).__next__)
    assert not watch.working
    assert not any(watch.poll() for _ in range(5))


def test_the_busy_time_of_the_cores_this_process_may_use_read_from_a_proc_stat_file(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal: idle, iowait and steal are not busy; the
    # nice column is (a niced process takes its share of a run's cores: see CoreWatch).
    stat.write_text(
        "cpu  300 20 30 5000 70 4 6 900 0 0\n"
        "cpu0 100 20 30 2500 35 4 6 450 0 0\n"
        "cpu1 200 0 0 2500 35 0 0 450 0 0\n"
        "intr 12345 0 0\nctxt 999\n"
    )
    tick = os.sysconf("SC_CLK_TCK")
    assert machine_busy_seconds(str(stat), cpus={0}) == pytest.approx(160 / tick)
    assert machine_busy_seconds(str(stat), cpus={0, 1}) == pytest.approx(360 / tick)
    assert machine_busy_seconds(str(stat), cpus={0, 5}) is None  # a core the file does not list
    assert machine_busy_seconds(str(stat), cpus=set()) is None
    stat.write_text("not a stat file\n")
    assert machine_busy_seconds(str(stat), cpus={0}) is None
    assert machine_busy_seconds(str(tmp_path / "missing"), cpus={0}) is None


@pytest.mark.skipif(machine_busy_seconds() is None, reason="the kernel does not report the machine's busy time")
def test_a_real_nice_19_process_counts_as_busy_time():
    spin = "import os, time\nos.nice(19)\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass"
    before = machine_busy_seconds()
    child = subprocess.Popen([sys.executable, "-c", spin])
    _, status, usage = os.wait4(child.pid, 0)
    busy = machine_busy_seconds() - before
    assert status == 0
    # The kernel samples a core's columns at each tick: within a few ticks of what the child ran.
    assert busy > usage.ru_utime + usage.ru_stime - 0.1


@pytest.mark.skipif(machine_busy_seconds() is None, reason="the kernel does not report the machine's busy time")
@pytest.mark.parametrize("nice", [0, 19])
def test_the_watch_sees_a_real_process_that_keeps_a_core_busy(nice):
    """Niced or not: a nice-19 process still takes a share of a run's cores (CoreWatch says why)."""
    watch = CoreWatch()
    spin = f"import os, time\nos.nice({nice})\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        deadline = time.monotonic() + 10
        while watch.poll() < 1:
            assert time.monotonic() < deadline, "a process spinning on a core for 10 s went unseen"
            time.sleep(0.05)
    finally:
        busy.kill()
        busy.wait()
