"""Ctrl-C where native code would mangle it: held until that code returns, then the usual
interrupt (one line, exit 130), never a bug report. SIGTERM stops a training command the same
way, with exit 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from conftest import REPO
from helpers import write_rigged_run
from typer.testing import CliRunner

from spamtune.checkpoint import WEIGHTS_FILE, read_tensors
from spamtune.cli import app
from spamtune.interrupts import forget_stop, interrupted_status, interrupts_deferred, sigterm_as_interrupt


@pytest.fixture(autouse=True)
def python_takes_ctrl_c():
    """Python's own SIGINT handler, as in a terminal: a shell's background job starts with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_inside_the_block_comes_once_the_block_is_over():
    went_on = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            went_on.append("the block ran to its end")
    assert went_on == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_block_without_ctrl_c_leaves_the_handler_as_it_was():
    with interrupts_deferred():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_ctrl_c_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_off_the_main_thread_the_block_runs_as_it_is():
    """Only the main thread may set a signal handler; a reader on a side thread still reads."""
    outcome = []

    def read() -> None:
        try:
            with interrupts_deferred():
                outcome.append("ran")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert outcome == ["ran"]


def test_sigterm_inside_the_block_is_an_interrupt_with_status_143_and_the_handler_comes_back():
    previous = signal.getsignal(signal.SIGTERM)
    forget_stop()
    assert interrupted_status() == 130
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigterm_as_interrupt():
                signal.raise_signal(signal.SIGTERM)
        assert interrupted_status() == 143
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        forget_stop()


def test_sigterm_taken_as_an_interrupt_is_held_like_ctrl_c_and_comes_after_the_block():
    went_on = []
    try:
        with sigterm_as_interrupt():
            with pytest.raises(KeyboardInterrupt):
                with interrupts_deferred():
                    signal.raise_signal(signal.SIGTERM)
                    went_on.append("the block ran to its end")
        assert went_on == ["the block ran to its end"] and interrupted_status() == 143
    finally:
        forget_stop()


def test_ctrl_c_while_a_model_is_laid_out_on_the_meta_device_comes_after_the_block():
    """torch's device mode stack, popped and pushed around the calls in the block, is never left
    halfway; the interrupt comes once torch is back on its own device."""
    from spamtune.interrupts import on_meta_device
    from spamtune.model import GPTConfig, GPTModel

    cfg = GPTConfig(vocab_size=64, context_length=16, emb_dim=8, n_heads=2, n_layers=1)
    made = []
    with pytest.raises(KeyboardInterrupt):
        with on_meta_device():
            signal.raise_signal(signal.SIGINT)
            made.append(GPTModel(cfg).tok_emb.weight.device.type)
    assert made == ["meta"]
    assert torch.empty(()).device.type == "cpu" and torch._C._len_torch_function_stack() == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(tmp_path, monkeypatch):
    """Typer alone would end the command with status 130 and nothing said."""
    from spamtune import run_catalog

    def ctrl_c(root):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_catalog, "list_runs", ctrl_c)
    result = CliRunner().invoke(app, ["runs", "--json", "--data-dir", str(tmp_path)])
    assert result.exit_code == 130
    assert result.stdout == "" and result.stderr == "Error: interrupted\n"


@pytest.fixture
def ctrl_c_inside_get_tensor(monkeypatch):
    """SIGINT while safetensors' ``get_tensor`` builds its first tensor: at the second storage
    slice it takes, where safetensors 0.8 turns the interrupt into ``ValueError: could not
    determine the shape of object type 'torch.storage.UntypedStorage'``."""
    real_getitem = torch.UntypedStorage.__getitem__
    slices = []

    def getitem(self, *args):
        slices.append(args)
        if len(slices) == 2:
            signal.raise_signal(signal.SIGINT)
        return real_getitem(self, *args)

    monkeypatch.setattr(torch.UntypedStorage, "__getitem__", getitem)
    return slices


def test_ctrl_c_inside_a_tensor_read_is_a_keyboard_interrupt(tmp_path, ctrl_c_inside_get_tensor):
    run = write_rigged_run(tmp_path / "run")
    ctrl_c_inside_get_tensor.clear()  # counted from the read on
    with pytest.raises(KeyboardInterrupt):
        read_tensors(run / WEIGHTS_FILE, "cpu", lambda name, tensor: tensor)
    assert len(ctrl_c_inside_get_tensor) >= 2  # the interrupt came inside the read


def test_ctrl_c_while_a_run_loads_is_one_line_and_exit_130(tmp_path, ctrl_c_inside_get_tensor):
    run = write_rigged_run(tmp_path / "run")
    ctrl_c_inside_get_tensor.clear()
    result = CliRunner().invoke(app, ["predict", "--run", str(run), "hello"])
    assert result.exit_code == 130, result.stderr
    assert result.stdout == "" and result.stderr == "Error: interrupted\n"


# A fresh `spamtune` process that gets Ctrl-C as it first imports {module}, sent by an import finder.
CTRL_C_ON_IMPORT = """
import runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with SIGINT ignored


class CtrlCOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
        return None


sys.meta_path.insert(0, CtrlCOnImport())
sys.argv = ["spamtune", *{args!r}]
{entry}
"""
ENTRIES = {
    "console script": "from spamtune.entry import main; main()",  # what pyproject's [project.scripts] names
    "python -m spamtune": "runpy.run_module('spamtune', run_name='__main__', alter_sys=True)",
}


def spamtune_stopped_importing(module: str, entry: str, *args: str) -> subprocess.CompletedProcess:
    code = CTRL_C_ON_IMPORT.format(module=module, args=list(args), entry=ENTRIES[entry])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("entry", ENTRIES)
def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130(entry):
    """Typer is the CLI's first heavy import: Python would print a traceback."""
    result = spamtune_stopped_importing("typer", entry, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "Error: interrupted\n")


@pytest.mark.parametrize("entry", ENTRIES)
def test_ctrl_c_while_torch_loads_numpy_stops_the_command(entry, tmp_path):
    """torch's import would lose it (the prediction would go on and print its verdict)."""
    run = write_rigged_run(tmp_path / "run")
    result = spamtune_stopped_importing("numpy", entry, "predict", "--run", str(run), "--format", "tsv", "hello!")
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "Error: interrupted\n")


@pytest.mark.parametrize("entry", ENTRIES)
def test_ctrl_c_while_the_options_are_parsed_is_one_line_and_exit_130(entry, tmp_path):
    """Typer reads a command's options with pydantic, imported as they are first parsed; Typer's
    own main would turn Ctrl-C there into exit status 130 with nothing said."""
    result = spamtune_stopped_importing("pydantic", entry, "runs", "--data-dir", str(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "Error: interrupted\n")


def test_ctrl_c_in_code_python_compiles_while_the_command_starts_is_exit_130_not_death_by_sigint(tmp_path):
    """dataclasses and inspect run generated code with exec and eval: an interrupt that comes out
    of such code makes ``python -m`` end by SIGINT once the command has exited 130 (the
    interpreter's own convention for an interrupt it saw no one catch)."""
    code = CTRL_C_ON_IMPORT.format(module="typer", args=["--version"], entry=ENTRIES["python -m spamtune"])
    (tmp_path / "stopped_in_exec.py").write_text(
        code.replace("signal.raise_signal(signal.SIGINT)", 'exec("signal.raise_signal(signal.SIGINT)")')
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(REPO), str(tmp_path)))}
    result = subprocess.run([sys.executable, "-m", "stopped_in_exec"], capture_output=True, text=True, env=env, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "Error: interrupted\n")
