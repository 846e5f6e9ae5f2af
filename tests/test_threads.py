"""The OpenMP wait policy: set by the spamtune command before torch loads, never over the
user's value, and left alone by ``import spamtune``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from spamtune.threads import prefer_passive_waiting

# Runs an entry point in a fresh interpreter, then reports the policy and whether torch loaded.
PROBE = """
import os, runpy, sys
sys.argv = ["spamtune", "--version"]
try:
    {entry}
except SystemExit:
    pass
print(os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
"""
ENTRIES = {
    "console script": "from spamtune.cli import main; main()",
    "python -m spamtune": "runpy.run_module('spamtune', run_name='__main__', alter_sys=True)",
    "import spamtune": "import spamtune; from spamtune import GPTConfig, SpamClassifier",
}


def probe(entry: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ.update(env, PYTHONPATH=str(REPO))
    code = PROBE.format(entry=ENTRIES[entry])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


@pytest.mark.parametrize("entry", ["console script", "python -m spamtune"])
def test_the_command_sets_passive_before_torch_loads(entry):
    assert probe(entry) == "PASSIVE False"


@pytest.mark.parametrize("entry", ["console script", "python -m spamtune"])
def test_the_users_policy_wins(entry):
    assert probe(entry, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE False"


def test_importing_the_library_changes_nothing():
    assert probe("import spamtune") == "None True"


def test_prefer_passive_waiting_says_whether_it_is_in_time():
    environ: dict[str, str] = {}
    assert prefer_passive_waiting(environ) is ("torch" not in sys.modules)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    environ = {"OMP_WAIT_POLICY": "active"}
    prefer_passive_waiting(environ)
    assert environ == {"OMP_WAIT_POLICY": "active"}
