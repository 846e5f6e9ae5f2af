"""The OpenMP wait policy: set by the spamtune command before torch loads, never over the
user's value, and left alone by ``import spamtune``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from conftest import REPO
from spamtune.errors import SpamtuneError
from spamtune.threads import call_on_passing_thread, prefer_passive_waiting

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


def probe(entry: str, args: tuple[str, ...] = ("--version",), **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environ.update(env, PYTHONPATH=str(REPO))
    code = PROBE.format(entry=ENTRIES[entry], args=list(args))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)
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
def test_training_spins_for_microseconds_unless_the_user_chose(entry):
    for command in ("finetune", "sweep"):
        assert probe(entry, (command, "--help")) == "PASSIVE 1000 False"
    assert probe(entry, ("finetune", "--help"), OMP_WAIT_POLICY="PASSIVE") == "PASSIVE None False"
    assert probe(entry, ("finetune", "--help"), GOMP_SPINCOUNT="0") == "PASSIVE 0 False"


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
