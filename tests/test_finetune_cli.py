"""`spamtune finetune`'s command line: --run names the run (new or resumed), --config repeats a
run's settings, the older spellings still work. Tiny runs on the tiny data (seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY_CONFIG, checkpointed_after_an_evaluation, ctrl_c_at_step, sigterm_once_ready, tiny_options, write_tiny_data
from typer.testing import CliRunner

from spamtune import runs
from spamtune.cli import app
from spamtune.errors import OptionError


@pytest.fixture
def root(tmp_path) -> Path:
    return write_tiny_data(tmp_path / "data")


def finetune(root: Path, *args: str):
    return CliRunner().invoke(
        app, ["finetune", "--data-dir", str(root), "--weights", "random", "--device", "cpu", "--precision", "fp32", *args]
    )


def hparams(run_dir: Path) -> dict:
    return json.loads((run_dir / runs.HPARAMS_FILE).read_text())


def test_run_names_a_new_run_and_config_repeats_its_settings(root, tmp_path):
    first = finetune(root, "--run", "first", "--model", str(root / "tiny.json"), "--epochs", "1", "--lr", "0.002", "--seed", "5")
    assert first.exit_code == 0, first.stderr
    first_dir = root / "runs" / "first"
    assert first.stdout.strip() == str(first_dir)

    again = finetune(root, "--config", "first", "--run", "second", "--seed", "9")  # a run by name; --seed wins
    assert again.exit_code == 0, again.stderr
    second = hparams(root / "runs" / "second")
    for name in ("model", "epochs", "lr", "trainable", "pooling", "batch_size"):
        assert second[name] == hparams(first_dir)[name], name
    assert (second["seed"], second["lr"], second["epochs"]) == (9, 0.002, 1)

    by_file = finetune(root, "--config", str(first_dir / runs.HPARAMS_FILE), "--out", str(tmp_path / "third"))  # older --out
    assert by_file.exit_code == 0, by_file.stderr
    assert hparams(tmp_path / "third")["seed"] == 5


def test_a_model_file_given_relative_is_recorded_absolute(root, tmp_path, monkeypatch):
    """--model tiny.json was recorded as given: `finetune --config RUN` from another directory
    then read no file, or another of that name. The path is recorded absolute; a named size as
    it is; a resume given the file again by its relative path takes it as the run's own."""
    monkeypatch.chdir(root)
    with monkeypatch.context() as interrupting:
        ctrl_c_at_step(interrupting, 3)
        first = finetune(root, "--run", "first", "--model", "tiny.json", "--epochs", "1")
    assert first.exit_code == 130, first.stderr
    assert hparams(root / "runs" / "first")["model"] == str(root / "tiny.json")
    resumed = finetune(root, "--resume", "--run", "first", "--model", "./tiny.json")
    assert resumed.exit_code == 0, resumed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tiny.json").write_text(json.dumps({**TINY_CONFIG, "n_layers": 1}))  # another file of that name
    monkeypatch.chdir(elsewhere)
    again = finetune(root, "--config", "first", "--run", "again")
    assert again.exit_code == 0, again.stderr
    assert hparams(root / "runs" / "again")["model"] == str(root / "tiny.json")
    assert hparams(root / "runs" / "again")["resolved"]["model_config"] == hparams(root / "runs" / "first")["resolved"]["model_config"]

    named = finetune(root, "--run", "named", "--model", "tiny", "--epochs", "1")
    assert named.exit_code == 0, named.stderr
    assert hparams(root / "runs" / "named")["model"] == "tiny"


def test_a_run_named_with_control_characters_is_printed_escaped_on_one_line(root):
    """The run folder's path went to stdout, and into the calibrate command on stderr, as it
    was: an escape sequence in --run drove the terminal and a line break made two lines of it."""
    result = finetune(root, "--run", "run\x1b]0;x\x07\nx", "--model", str(root / "tiny.json"), "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    shown = f"{root}/runs/run\\x1b]0;x\\x07\\nx"
    assert result.stdout == f"{shown}\n"
    # Spelt as bash's $'...', which reads the escapes back as the characters themselves.
    assert f"choose an operating point with: spamtune calibrate --run $'{shown}' --max-ham-loss 1%\n" in result.stderr
    assert "\x1b" not in result.output and runs.is_finished(root / "runs" / "run\x1b]0;x\x07\nx")


def test_config_errors(root, tmp_path):
    missing = finetune(root, "--config", "nosuch")
    assert missing.exit_code == 1 and "run folder not found: no run named 'nosuch'" in missing.stderr
    both = finetune(root, "--config", "x", "--resume")
    assert both.exit_code == 2 and "--config starts a new run" in both.stderr


def test_a_config_that_is_no_regular_file_or_no_json_is_one_line(root, tmp_path):
    import os

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    nested = finetune(root, "--config", str(deep))
    assert (nested.exit_code, nested.stderr) == (1, f"Error: cannot read run hyperparameters {deep}: not valid JSON (nested too deeply)\n")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "piped.json")  # read as the file it is, not looked for as a run folder
        piped = finetune(root, "--config", str(tmp_path / "piped.json"))
        reason = "it is not a regular file (a device, pipe or socket)"
        assert (piped.exit_code, piped.stderr) == (1, f"Error: cannot read run hyperparameters {tmp_path / 'piped.json'}: {reason}\n")
    assert not (root / "runs").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("warmup_steps", "5", '"warmup_steps" must be a whole number, not "5"'),
        ("clip_grad_norm", "0.5", '"clip_grad_norm" must be a number or null, not "0.5"'),
        ("epochs", True, '"epochs" must be a whole number, not true'),
        ("shortcuts", 1, '"shortcuts" must be true or false, not 1'),
        ("trainable", None, '"trainable" must be a string, not null'),
        *(  # JSON's whole numbers have no bound; a float's do
            pytest.param(name, 10**400, f'"{name}" must be a number a float can hold (at most ~1.8e308), not a 401-digit whole number', id=f"{name}-10**400")
            for name in ("lr", "weight_decay", "clip_grad_norm", "lora_alpha")
        ),
    ],
)
def test_a_hand_edited_setting_of_the_wrong_type_is_one_line_naming_the_file_and_field(root, monkeypatch, field, value, message):
    """Read through --config and through --resume alike, before anything trains."""
    with monkeypatch.context() as interrupting:
        ctrl_c_at_step(interrupting, 3)
        stopped = finetune(root, "--run", "stopped", "--model", str(root / "tiny.json"), "--epochs", "1")
    assert stopped.exit_code == 130
    hparams_file = root / "runs" / "stopped" / runs.HPARAMS_FILE
    edited = {**hparams(root / "runs" / "stopped"), field: value}
    hparams_file.write_text(json.dumps(edited))

    for result in (finetune(root, "--config", str(hparams_file), "--run", "again"), finetune(root, "--resume", "--run", "stopped")):
        assert result.exit_code == 1
        assert result.stderr == f"Error: {hparams_file}: {message}\n"
    assert not (root / "runs" / "again").exists()


_MISSING = object()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_length", "abc", ': "resolved.max_length" must be a whole number of at least 1, not "abc"'),
        ("max_length", 12.5, ': "resolved.max_length" must be a whole number of at least 1, not 12.5'),
        ("max_length", 0, ': "resolved.max_length" must be a whole number of at least 1, not 0'),
        ("max_length", _MISSING, ': "resolved" lacks "max_length"'),
        ("data_fingerprint", 5, ': "resolved.data_fingerprint" must be a string, not 5'),
        ("data_fingerprint", _MISSING, ': "resolved" lacks "data_fingerprint"'),
        ("model_config", "tiny", ': "resolved.model_config" must be an object, not "tiny"'),
        (None, [1], ': "resolved" must be an object, not [1]'),
        (None, _MISSING, ' lacks "resolved"'),
    ],
)
def test_a_hand_edited_resolved_setting_is_one_line_naming_the_file_and_field_on_resume(root, monkeypatch, field, value, message):
    """What a run resolved its options to (the message length it trains at, the data it began
    with) is read back on --resume: a broken value is the file's fault, said before anything loads."""
    with monkeypatch.context() as interrupting:
        ctrl_c_at_step(interrupting, 3)
        stopped = finetune(root, "--run", "stopped", "--model", str(root / "tiny.json"), "--epochs", "1")
    assert stopped.exit_code == 130
    hparams_file = root / "runs" / "stopped" / runs.HPARAMS_FILE
    edited = hparams(root / "runs" / "stopped")
    section, key = (edited, "resolved") if field is None else (edited["resolved"], field)
    if value is _MISSING:
        del section[key]
    else:
        section[key] = value
    hparams_file.write_text(json.dumps(edited))

    result = finetune(root, "--resume", "--run", "stopped")
    assert (result.exit_code, result.stderr) == (1, f"Error: {hparams_file}{message}\n")


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_a_seed_torch_cannot_take_is_refused_before_any_folder(root, monkeypatch, seed):
    """Given on the command line, in a --config file or in the hparams.json of a run resumed,
    it is refused up front, not as torch's overflow once the run folder exists."""
    reason = f"must be between {-(2**63)} and {2**64 - 1} (got {seed})"
    given = finetune(root, "--run", "given", "--model", str(root / "tiny.json"), "--epochs", "1", f"--seed={seed}")
    assert (given.exit_code, given.stderr) == (2, f"Error: --seed {reason}\n")
    assert not (root / "runs" / "given").exists()

    with monkeypatch.context() as interrupting:
        ctrl_c_at_step(interrupting, 3)
        stopped = finetune(root, "--run", "stopped", "--model", str(root / "tiny.json"), "--epochs", "1")
    assert stopped.exit_code == 130
    hparams_file = root / "runs" / "stopped" / runs.HPARAMS_FILE
    hparams_file.write_text(json.dumps({**hparams(root / "runs" / "stopped"), "seed": seed}))
    for result in (finetune(root, "--config", str(hparams_file), "--run", "again"), finetune(root, "--resume", "--run", "stopped")):
        assert (result.exit_code, result.stderr) == (1, f'Error: {hparams_file}: "seed" {reason}\n')
    assert not (root / "runs" / "again").exists()


@pytest.mark.parametrize(
    ("field", "value", "flag", "reason"),
    [
        ("lr", -1.0, "--lr -1", "{} must be a positive number (got -1.0)"),
        ("schedule", "bogus", "--schedule bogus", "unknown {} 'bogus'; choose one of: constant, cosine, linear"),
        ("warmup_steps", -3, "--warmup-steps -3", "{} must be 0 or more (got -3)"),
        ("lora_rank", 0, "--lora-rank 0", "{} must be a positive integer (got 0)"),
    ],
)
def test_a_bad_value_in_a_runs_hparams_names_the_file_and_field_not_a_flag(root, monkeypatch, field, value, flag, reason):
    """Read back by --resume or --config, a value that cannot work is the file's fault (exit 1),
    said as its field; the same value typed as a flag beside --config is still the flag's (exit 2)."""
    with monkeypatch.context() as interrupting:
        ctrl_c_at_step(interrupting, 3)
        stopped = finetune(root, "--run", "stopped", "--model", str(root / "tiny.json"), "--epochs", "1", "--trainable", "lora")
    assert stopped.exit_code == 130
    hparams_file = root / "runs" / "stopped" / runs.HPARAMS_FILE
    original = hparams(root / "runs" / "stopped")
    hparams_file.write_text(json.dumps({**original, field: value}))
    for result in (finetune(root, "--resume", "--run", "stopped"), finetune(root, "--config", str(hparams_file), "--run", "again")):
        assert (result.exit_code, result.stderr) == (1, f"Error: {hparams_file}: {reason.format(json.dumps(field))}\n")
    hparams_file.write_text(json.dumps(original))
    typed = finetune(root, "--config", str(hparams_file), "--run", "again", *flag.split())
    assert typed.exit_code == 2 and flag.split()[0] in typed.stderr and str(hparams_file) not in typed.stderr
    assert not (root / "runs" / "again").exists()
    assert finetune(root, "--resume", "--run", "stopped").exit_code == 0  # the file put back: the run goes on


def test_the_seeds_allowed_are_exactly_those_torch_takes(root):
    import torch

    from spamtune.options import validate_options

    for edge, beyond in ((2**64 - 1, 2**64), (-(2**63), -(2**63) - 1)):
        torch.manual_seed(edge)
        validate_options(tiny_options(root, seed=edge))
        with pytest.raises(ValueError):  # torch refuses it, so spamtune must too
            torch.manual_seed(beyond)
        with pytest.raises(OptionError, match="seed must be between"):
            validate_options(tiny_options(root, seed=beyond))


def test_a_whole_number_where_a_number_belongs_is_taken_as_that_number(root):
    first = finetune(root, "--run", "first", "--model", str(root / "tiny.json"), "--epochs", "1")
    assert first.exit_code == 0, first.stderr
    hparams_file = root / "runs" / "first" / runs.HPARAMS_FILE
    hparams_file.write_text(json.dumps({**hparams(root / "runs" / "first"), "weight_decay": 0, "lora_alpha": 8}))
    again = finetune(root, "--config", "first", "--run", "again")
    assert again.exit_code == 0, again.stderr
    saved = hparams(root / "runs" / "again")
    assert (saved["weight_decay"], saved["lora_alpha"]) == (0.0, 8.0)
    assert isinstance(saved["weight_decay"], float) and isinstance(saved["lora_alpha"], float)


def test_ctrl_c_once_the_run_is_complete_stops_nothing_and_the_command_succeeds(root, monkeypatch):
    """The run's files are all written: only the report is left to print."""
    import signal

    from spamtune import train
    from spamtune.cli import finetune as finetune_cli

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (conftest restores it)
    real_finetune, real_duration = train.finetune, finetune_cli._duration
    returned = []

    def finetune_then_note(*args, **kwargs):
        returned.append(real_finetune(*args, **kwargs))
        return returned[-1]

    def ctrl_c_while_reporting(seconds):  # formats the wall times of progress lines and the result's
        if returned:
            signal.raise_signal(signal.SIGINT)
        return real_duration(seconds)

    monkeypatch.setattr(train, "finetune", finetune_then_note)
    monkeypatch.setattr(finetune_cli, "_duration", ctrl_c_while_reporting)
    result = finetune(root, "--run", "done", "--model", str(root / "tiny.json"), "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(root / "runs" / "done") and "test accuracy" in result.stderr
    assert runs.is_finished(root / "runs" / "done")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h.update(batch_size=4), '"batch_size" is 4 but the run was checkpointed with 8'),
        (lambda h: h["resolved"].update(labels={"ham": 1, "spam": 0}), '"resolved.labels" is {"ham": 1, "spam": 0} but the run was checkpointed with {"ham": 0, "spam": 1}'),
        (lambda h: h["resolved"].update(max_length=7), '"resolved.max_length" is 7 but the run was checkpointed with'),
    ],
)
def test_a_resume_refuses_settings_edited_since_the_last_checkpoint_and_takes_them_put_back(root, monkeypatch, edit, message):
    with monkeypatch.context() as interrupting:
        ctrl_c_at_step(interrupting, 3)
        stopped = finetune(root, "--run", "stopped", "--model", str(root / "tiny.json"), "--epochs", "1", "--batch-size", "8")
    assert stopped.exit_code == 130
    hparams_file = root / "runs" / "stopped" / runs.HPARAMS_FILE
    original = hparams_file.read_text()
    edited = json.loads(original)
    edit(edited)
    hparams_file.write_text(json.dumps(edited))
    refused = finetune(root, "--resume", "--run", "stopped")
    assert refused.exit_code == 1 and refused.stderr.startswith(f"Error: {hparams_file}: {message}")
    assert refused.stderr.count("\n") == 1 and "spamtune finetune --config" in refused.stderr
    hparams_file.write_text(original)
    resumed = finetune(root, "--resume", "--run", "stopped")
    assert resumed.exit_code == 0, resumed.stderr


def test_resume_takes_the_newest_interrupted_run_or_the_one_named(root, monkeypatch):
    nothing = finetune(root, "--resume")
    assert nothing.exit_code == 1 and f"no interrupted run in {root / 'runs'} to resume" in nothing.stderr
    with monkeypatch.context() as interrupting:
        ctrl_c_at_step(interrupting, 3)
        stopped = finetune(root, "--run", "stopped", "--model", str(root / "tiny.json"), "--epochs", "1")
    assert stopped.exit_code == 130
    assert f"continue with: spamtune finetune --resume --run {root / 'runs' / 'stopped'}" in stopped.stderr
    # A new run in its folder is refused, with the way to continue it.
    taken = finetune(root, "--run", "stopped", "--model", str(root / "tiny.json"), "--epochs", "1")
    assert taken.exit_code == 1 and taken.stderr.endswith(f"continue this unfinished run with `spamtune finetune --resume --run {root / 'runs' / 'stopped'}`\n")

    resumed = finetune(root, "--resume")  # no --run: the newest interrupted run
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.stdout.strip() == str(root / "runs" / "stopped") and "test accuracy" in resumed.stderr
    finished = finetune(root, "--resume", "stopped")  # the older `--resume RUN`, by name
    assert finished.exit_code == 1 and "is a finished run" in finished.stderr
    stray = finetune(root, "stopped")
    assert stray.exit_code == 2 and "name the run with --run" in stray.stderr
    # A finished run, or a file, has nothing to resume: no `--resume` that would only fail.
    note = root / "notes.txt"
    note.write_text("mine")
    for taken in (root / "runs" / "stopped", note):
        again = finetune(root, "--run", str(taken), "--model", str(root / "tiny.json"), "--epochs", "1")
        assert (again.exit_code, again.stderr) == (1, f"Error: {taken} already exists and is not empty; choose another --run\n")


def test_sigterm_stops_a_run_as_ctrl_c_does_with_its_best_weights_and_the_resume_line(root):
    """systemd's stop, `timeout` and a batch scheduler's time limit send SIGTERM: the run keeps
    its checkpoint, writes its best weights as its classifier and says how to go on, exit 143."""
    import sys

    run_dir = root / "runs" / "stopped"
    command = [
        sys.executable, "-m", "spamtune", "finetune", "--data-dir", str(root), "--model", str(root / "tiny.json"),
        "--weights", "random", "--device", "cpu", "--precision", "fp32", "--epochs", "500", "--run", "stopped",
    ]  # fmt: skip
    stopped = sigterm_once_ready(command, checkpointed_after_an_evaluation(run_dir))
    stderr = stopped.stderr
    assert stopped.returncode == 143, stderr
    assert stopped.stdout == "" and "Traceback" not in stderr
    assert "interrupted at step" in stderr and "the run holds the best weights so far, from step" in stderr
    assert f"continue with: spamtune finetune --resume --run {run_dir}" in stderr
    assert runs.resume_file(run_dir).is_file()
    predicted = CliRunner().invoke(app, ["predict", "--run", str(run_dir), "--json", "hello"])
    assert predicted.exit_code == 0, predicted.stderr


def test_a_damaged_metrics_line_stops_a_resume_with_one_line_naming_it(root, monkeypatch):
    """metrics.jsonl is only ever rewritten whole: a line cut short or edited since is named in
    one error, and the resume goes on once it is fixed, instead of "unexpected JSONDecodeError"."""
    with monkeypatch.context() as interrupting:
        ctrl_c_at_step(interrupting, 4)
        stopped = finetune(root, "--run", "stopped", "--model", str(root / "tiny.json"), "--epochs", "1", "--eval-every", "1")
    assert stopped.exit_code == 130, stopped.stderr
    metrics = root / "runs" / "stopped" / runs.METRICS_FILE
    good = metrics.read_text()
    lines = good.count("\n")
    assert lines >= 2
    for damage in ('{"step": 9, "epo', "[1, 2]", '{"epoch": 1}'):
        metrics.write_text(good + damage)
        resumed = finetune(root, "--resume")
        assert (resumed.exit_code, resumed.stderr) == (1, f"Error: {metrics}, line {lines + 1}, is not an evaluation record (a JSON object with its step); fix or remove that line\n")
    metrics.write_text(good)
    resumed = finetune(root, "--resume")
    assert resumed.exit_code == 0, resumed.stderr


def test_a_config_under_the_home_of_no_user_is_one_line(tmp_path):
    result = finetune(tmp_path, "--config", "~no-such-user-spamtune/hparams.json")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "no home folder for ~no-such-user-spamtune" in result.stderr and "unexpected" not in result.stderr
