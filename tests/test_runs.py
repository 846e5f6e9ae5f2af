"""`spamtune runs`: listing (table, TSV, JSON), `runs show`, `runs rm`, over a real tiny run and
hand-made unfinished ones."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import tiny_options, write_tiny_data
from typer.testing import CliRunner

from spamtune import run_catalog, runs, train
from spamtune.cli import app
from spamtune.cli import runs as runs_cli
from spamtune.errors import SpamtuneError


@pytest.fixture(scope="module")
def finished_template(tmp_path_factory) -> Path:
    """One real run, trained for an epoch on the tiny data (copied into each test's data root)."""
    root = write_tiny_data(tmp_path_factory.mktemp("runs-data"))
    summary = train.finetune(tiny_options(root, epochs=1), root / "runs" / "done")
    return Path(summary["run"])


@pytest.fixture
def root(tmp_path, finished_template) -> Path:
    """A data root with a finished run, an interrupted one and a failed one, oldest to newest."""
    root = tmp_path / "root"
    done = root / "runs" / "done"
    shutil.copytree(finished_template, done)
    interrupted = root / "runs" / "stopped"
    (interrupted / runs.RESUME_DIR).mkdir(parents=True)
    (interrupted / runs.RESUME_DIR / runs.RESUME_FILE).write_bytes(b"x" * 1000)
    (interrupted / runs.HPARAMS_FILE).write_text(json.dumps({"model": "/data/my-shape.json", "trainable": "all"}))
    # written under metrics.jsonl's old short names, which the listing still reads
    records = [{"step": 5, "val_loss": 0.5, "val_acc": 0.7}, {"step": 10, "val_loss": 0.3, "val_acc": 0.9},
               {"step": 15, "val_loss": 0.4, "val_acc": 0.95}]  # fmt: skip
    (interrupted / runs.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    failed = root / "runs" / "crashed"
    failed.mkdir()
    (failed / runs.HPARAMS_FILE).write_text(json.dumps({"model": "gpt2-small", "trainable": "last-block"}))
    (root / "runs" / "not-a-run").mkdir()  # an empty folder: not listed
    for age, run in ((300, done), (200, interrupted), (100, failed)):
        stamp = 1_700_000_000 - age
        for path in [run, *run.rglob("*")]:
            os.utime(path, (stamp, stamp), follow_symlinks=False)
    return root


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, list(args), **kwargs)


def test_json_lists_every_run_newest_first_with_status_and_figures(root):
    result = invoke("runs", "--json", "--data-dir", str(root))
    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [r["name"] for r in listed] == ["crashed", "stopped", "done"]
    by_name = {r["name"]: r for r in listed}
    done = by_name["done"]
    summary = json.loads((root / "runs" / "done" / runs.SUMMARY_FILE).read_text())
    assert done["status"] == "finished" and done["resume_command"] is None
    assert (done["model"], done["trainable"], done["weights"]) == ("tiny", "last-block", "random")
    assert done["test_accuracy"] == summary["test_accuracy"]
    assert done["validation_accuracy"] == summary["validation_accuracy"]
    assert done["size_bytes"] == sum(p.stat().st_size for p in (root / "runs" / "done").rglob("*") if p.is_file())
    assert done["path"] == str(root / "runs" / "done")

    stopped = by_name["stopped"]
    assert stopped["status"] == "interrupted" and stopped["model"] == "my-shape" and stopped["trainable"] == "all"
    assert stopped["validation_accuracy"] == 0.9  # the best evaluation (lowest loss), not the last
    assert stopped["test_accuracy"] is None
    assert stopped["resume_command"] == f"spamtune finetune --resume --run {root / 'runs' / 'stopped'}"

    crashed = by_name["crashed"]
    assert crashed["status"] == "failed" and crashed["validation_accuracy"] is None and crashed["resume_command"] is None
    assert crashed["modified"] == "2023-11-14T22:11:40+00:00"  # 1_700_000_000 - 100 s, in UTC
    assert crashed["age_seconds"] > 365 * 86400


def test_a_pipe_gets_tab_separated_values_with_a_header(root):
    lines = invoke("runs", "--data-dir", str(root)).stdout.splitlines()
    assert lines[0].split("\t") == list(runs_cli.TSV_FIELDS)
    rows = [line.split("\t") for line in lines[1:]]
    assert [(r[0], r[1]) for r in rows] == [("crashed", "failed"), ("stopped", "interrupted"), ("done", "finished")]
    assert rows[1][4] == "0.9" and rows[1][5] == ""


def test_a_terminal_gets_a_table_and_the_resume_command(root, monkeypatch):
    monkeypatch.setattr(runs_cli, "_stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "150")
    (root / "runs" / "[bold]odd").mkdir()
    (root / "runs" / "[bold]odd" / runs.HPARAMS_FILE).write_text("{}")
    out = invoke("runs", "--data-dir", str(root)).stdout
    header = out.splitlines()[0].split()
    assert header == ["name", "status", "model", "trainable", "val", "acc", "test", "acc", "size", "age"]
    assert "[bold]odd" in out  # a folder name is shown as it is, never as markup
    done_row = next(line for line in out.splitlines() if line.startswith("done "))
    validation = json.loads((root / "runs" / "done" / runs.SUMMARY_FILE).read_text())["validation_accuracy"]
    assert done_row.split()[1:5] == ["finished", "tiny", "last-block", f"{validation:.2%}"] and done_row.endswith(" d")
    assert f"stopped is interrupted; continue it with: spamtune finetune --resume --run {root / 'runs' / 'stopped'}" in out


def test_a_run_named_with_a_line_break_or_an_escape_sequence_is_shown_escaped(root, monkeypatch):
    """The table, `runs show` and `runs rm`'s question passed the name to the terminal as it was:
    the row broke in two and the escape sequence turned the rest of the screen red."""
    name = "odd\nname\x1b[31m"
    shutil.copytree(root / "runs" / "stopped", root / "runs" / name)
    escaped = "odd\\nname\\x1b[31m"
    piped = invoke("runs", "--data-dir", str(root)).stdout  # tsv: the line break a space, as in predict's
    assert "\x1b" not in piped and any(line.startswith("odd name\\x1b[31m\tinterrupted\t") for line in piped.splitlines())
    monkeypatch.setattr(runs_cli, "_stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    table = invoke("runs", "--data-dir", str(root))
    assert table.exit_code == 0, table.stderr
    assert "\x1b[31m" not in table.stdout and "\nname" not in table.stdout
    assert any(line.startswith(escaped + " ") for line in table.stdout.splitlines())  # its row is one line
    assert f"{escaped} is interrupted; continue it with" in table.stdout
    shown = invoke("runs", "show", name, "--data-dir", str(root))
    assert shown.exit_code == 0, shown.stderr
    assert "\x1b" not in shown.stdout and ["name", escaped] in [line.split() for line in shown.stdout.splitlines()]
    monkeypatch.setattr(runs_cli, "_stdin_is_terminal", lambda: True)
    declined = invoke("runs", "rm", name, "--data-dir", str(root), input="n\n")
    assert declined.exit_code == 1 and "\x1b" not in declined.stderr
    assert f"{root / 'runs'}/{escaped}  (interrupted" in declined.stderr
    removed = invoke("runs", "rm", "--yes", name, "--data-dir", str(root))  # stdout: one line per run, as the question
    assert removed.exit_code == 0 and removed.stdout == f"{root / 'runs'}/{escaped}\n"


def test_runs_show_escapes_the_keys_of_a_run_s_files_as_it_does_their_values(root):
    """The values were escaped but not the keys: an hparams.json planted with a key holding an
    escape sequence set the terminal's title, and one with a line break made two lines."""
    hparams = root / "runs" / "done" / runs.HPARAMS_FILE
    hparams.write_text(json.dumps({**json.loads(hparams.read_text()), "\x1b]0;owned\x07": 1, "two\nlines": "v"}))
    shown = invoke("runs", "show", "done", "--data-dir", str(root))
    assert shown.exit_code == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert ["hparams.\\x1b]0;owned\\x07", "1"] in lines and ["hparams.two\\nlines", "v"] in lines


def test_runs_json_escapes_the_c1_controls_and_line_separators_json_leaves_raw(root):
    """`json.dumps(ensure_ascii=False)` writes U+009B (a terminal's one-byte escape sequence
    start) and U+2028 as they are: a run named with them reached the terminal reading the JSON."""
    name = "odd\u009b31m\u2028name"
    shutil.copytree(root / "runs" / "stopped", root / "runs" / name)
    listed = invoke("runs", "--json", "--data-dir", str(root))
    shown = invoke("runs", "show", name, "--json", "--data-dir", str(root))
    for result in (listed, shown):
        assert result.exit_code == 0, result.stderr
        assert "\x9b" not in result.stdout and "\u2028" not in result.stdout
        assert "\\u009b" in result.stdout and "\\u2028" in result.stdout
    assert name in [info["name"] for info in json.loads(listed.stdout)]
    assert json.loads(shown.stdout)["name"] == name



def test_a_run_folder_whose_name_is_no_utf8_is_listed_shown_and_removed_in_every_format(root):
    """A name with a byte that is no UTF-8 (Python reads it as a lone surrogate) cannot be
    written to a UTF-8 stdout: one such folder made `runs` and `runs --json` fail whole, and
    `runs rm` fail after removing it, before the runs given after it. It is written as Python
    writes it in a string (\\udcff in text, the same escape in JSON, which reads back as the name)."""
    name = os.fsdecode(b"latin-\xe9t\xe9")
    shutil.copytree(root / "runs" / "stopped", root / "runs" / name)
    piped = invoke("runs", "--data-dir", str(root))
    listed = invoke("runs", "--json", "--data-dir", str(root))
    shown = invoke("runs", "show", name, "--data-dir", str(root))
    shown_json = invoke("runs", "show", name, "--json", "--data-dir", str(root))
    for result in (piped, listed, shown, shown_json):
        assert result.exit_code == 0 and result.stderr == "", result.stderr
    assert any(line.startswith("latin-\\udce9t\\udce9\tinterrupted\t") for line in piped.stdout.splitlines())
    assert ["name", "latin-\\udce9t\\udce9"] in [line.split() for line in shown.stdout.splitlines()]
    assert name in [info["name"] for info in json.loads(listed.stdout)] and json.loads(shown_json.stdout)["name"] == name
    removed = invoke("runs", "rm", "--yes", name, "stopped", "--data-dir", str(root))
    assert removed.exit_code == 0, removed.stderr
    assert removed.stdout.splitlines() == [f"{root / 'runs'}/latin-\\udce9t\\udce9", str(root / "runs" / "stopped")]
    assert not (root / "runs" / name).exists() and not (root / "runs" / "stopped").exists()


def test_no_runs_yet(tmp_path, monkeypatch):
    assert invoke("runs", "--json", "--data-dir", str(tmp_path)).stdout == "[]\n"
    monkeypatch.setattr(runs_cli, "_stdout_is_terminal", lambda: True)
    empty = invoke("runs", "--data-dir", str(tmp_path))
    assert empty.exit_code == 0 and empty.stdout == ""
    assert f"no runs in {tmp_path / 'runs'} yet" in empty.stderr and "--data-dir DIR or set SPAMTUNE_HOME" in empty.stderr
    (tmp_path / "sweeps" / "sweep-3f9a1c2b7d4e").mkdir(parents=True)  # runs there are a sweep's
    (tmp_path / "sweeps" / "sweep-3f9a1c2b7d4e" / "sweep.json").write_text("{}")
    pointed = invoke("runs", "--data-dir", str(tmp_path))
    assert pointed.stderr == f"no runs in {tmp_path / 'runs'}; the runs of the sweeps here are listed by `spamtune sweeps`\n"


def test_show_prints_summary_and_hparams(root, monkeypatch):
    shown = json.loads(invoke("runs", "show", "done", "--json", "--data-dir", str(root)).stdout)
    assert shown["status"] == "finished" and shown["summary"]["model"] == "tiny"
    assert shown["hparams"]["epochs"] == 1 and shown["evaluations"] == 1
    monkeypatch.setenv("SPAMTUNE_HOME", str(root))
    text = invoke("runs", "show").stdout  # the newest finished run by default
    assert ["status", "finished"] in [line.split() for line in text.splitlines()]
    assert any(line.startswith("summary.test_accuracy ") for line in text.splitlines())
    assert any(line.startswith("hparams.resolved.max_length ") for line in text.splitlines())
    by_path = invoke("runs", "show", str(root / "runs" / "stopped"), "--json")
    assert json.loads(by_path.stdout)["summary"] is None
    missing = invoke("runs", "show", "nope")
    assert missing.exit_code == 1 and f"no run named 'nope' in {root / 'runs'}" in missing.stderr


def test_rm_needs_yes_off_a_terminal(root):
    refused = invoke("runs", "rm", "crashed", "--data-dir", str(root))
    assert refused.exit_code == 2 and "without --yes" in refused.stderr
    assert (root / "runs" / "crashed").is_dir()
    removed = invoke("runs", "rm", "crashed", "stopped", "--yes", "--data-dir", str(root))
    assert removed.exit_code == 0
    assert removed.stdout.splitlines() == [str(root / "runs" / "crashed"), str(root / "runs" / "stopped")]
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["done", "not-a-run"]  # nothing hidden left behind


def test_rm_asks_on_a_terminal(root, monkeypatch):
    monkeypatch.setattr(runs_cli, "_stdin_is_terminal", lambda: True)
    declined = invoke("runs", "rm", "done", "--data-dir", str(root), input="n\n")
    assert declined.exit_code == 1 and "Remove this run" in declined.stderr and "nothing removed" in declined.stderr
    assert (root / "runs" / "done").is_dir()
    accepted = invoke("runs", "rm", "done", "--data-dir", str(root), input="y\n")
    assert accepted.exit_code == 0 and not (root / "runs" / "done").exists()


def test_rm_touches_only_runs_and_never_a_link_target(root, tmp_path):
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    refused = invoke("runs", "rm", str(other), "--yes")
    assert refused.exit_code == 1 and "is not a spamtune run folder" in refused.stderr and other.is_dir()
    empty = invoke("runs", "rm", "not-a-run", "--yes", "--data-dir", str(root))
    assert empty.exit_code == 1 and (root / "runs" / "not-a-run").is_dir()
    link = root / "runs" / "linked"
    link.symlink_to(root / "runs" / "done", target_is_directory=True)
    assert invoke("runs", "rm", "linked", "--yes", "--data-dir", str(root)).exit_code == 0
    assert not link.is_symlink() and (root / "runs" / "done" / runs.SUMMARY_FILE).is_file()


def test_rm_of_one_run_named_twice_in_two_spellings_removes_it_once_and_succeeds(root):
    """`runs rm x <root>/runs/../runs/x` removed the run, then failed on the second spelling as
    a run not found: exit 1 for a removal that was done."""
    spelt = f"{root}/runs/../runs/done"
    removed = invoke("runs", "rm", "--yes", "done", spelt, "stopped", "--data-dir", str(root))
    assert removed.exit_code == 0 and "Error" not in removed.stderr, removed.stderr
    assert removed.stdout.splitlines() == [str(root / "runs" / "done"), str(root / "runs" / "stopped")]
    assert not (root / "runs" / "done").exists() and not (root / "runs" / "stopped").exists()


def test_rm_of_an_empty_run_name_is_a_usage_error_not_the_newest_run(root):
    """An empty run is the newest finished one for show and evaluate: `runs rm --yes "$RUN"`
    with RUN unset removed the newest finished run."""
    before = sorted(p.name for p in (root / "runs").iterdir())
    refused = invoke("runs", "rm", "--yes", "stopped", "", "--data-dir", str(root))
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr == "Error: an empty run name: name each run to remove (`spamtune runs` lists them)\n"
    assert sorted(p.name for p in (root / "runs").iterdir()) == before


def test_a_run_being_trained_shows_as_running_and_is_not_removed(root):
    """Training holds the run folder's lock; a listing probes it and `runs rm` refuses."""
    stopped = root / "runs" / "stopped"
    with runs.lock_run_dir(stopped):
        listed = {r["name"]: r for r in json.loads(invoke("runs", "--json", "--data-dir", str(root)).stdout)}
        assert listed["stopped"]["status"] == "running" and listed["stopped"]["resume_command"] is None
        refused = invoke("runs", "rm", "stopped", "--yes", "--data-dir", str(root))
        assert refused.exit_code == 1 and "is in use" in refused.stderr and stopped.is_dir()
    assert run_catalog.run_status(stopped) == "interrupted"  # the lock file stays; nobody holds it
    assert not (root / "runs" / "done" / runs.LOCK_FILE).exists()  # probing never creates one


def test_rm_holds_the_run_until_it_is_moved_away(root, monkeypatch):
    """A resume starting while `runs rm` removes the run is refused; it never trains in a folder
    that is being deleted."""
    stopped = root / "runs" / "stopped"
    rename, tried = os.rename, []

    def resume_meanwhile(src, dst):
        if Path(src) == stopped:
            with pytest.raises(runs.RunInUse):
                train.resume_finetune(stopped)
            tried.append(stopped.is_dir())
        rename(src, dst)

    monkeypatch.setattr(os, "rename", resume_meanwhile)
    assert invoke("runs", "rm", "stopped", "--yes", "--data-dir", str(root)).exit_code == 0
    assert tried == [True] and not stopped.exists()
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["crashed", "done", "not-a-run"]


def test_a_resume_that_comes_after_rm_finds_no_run_and_makes_no_folder(root, monkeypatch):
    """The folder is removed between the resume's look at it and its lock: the lock must not
    make an empty folder in its place, nor hold anything."""
    stopped = root / "runs" / "stopped"
    hold, removed = runs.hold_folder, []

    def removed_meanwhile(folder, in_use, what):
        if not removed:  # the resume's lock; rm's own comes through here too
            removed.append(folder)
            run_catalog.remove_run(folder)
        return hold(folder, in_use, what)

    monkeypatch.setattr(runs, "hold_folder", removed_meanwhile)
    with pytest.raises(SpamtuneError, match="was removed"):
        train.resume_finetune(stopped)
    assert not stopped.exists()
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["crashed", "done", "not-a-run"]


def test_rm_that_cannot_move_a_finished_run_leaves_no_lock_in_it(root, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", refuse)
    refused = invoke("runs", "rm", "done", "--yes", "--data-dir", str(root))
    assert refused.exit_code == 1 and "cannot remove" in refused.stderr
    assert run_catalog.run_status(root / "runs" / "done") == "finished"
    assert not (root / "runs" / "done" / runs.LOCK_FILE).exists()


def test_old_metrics_lines_are_read_under_the_summary_names(tmp_path):
    old = {"step": 5, "train_loss": 0.6, "train_acc": 0.5, "val_loss": 0.4, "val_acc": 0.75, "elapsed_s": 1.0}
    (tmp_path / runs.METRICS_FILE).write_text(json.dumps(old) + "\n")
    expected = {"step": 5, "train_loss": 0.6, "train_accuracy": 0.5, "validation_loss": 0.4, "validation_accuracy": 0.75, "elapsed_s": 1.0}
    assert runs.read_metrics(tmp_path) == [expected]  # what resume and the curves read
    assert run_catalog.read_evaluations(tmp_path) == [expected]  # what the listing reads


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_in_place_of_a_runs_hparams_json_does_not_stop_the_listing(tmp_path):
    """In a process of its own, bounded: the read would wait for a writer for ever."""
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "runs" / "piped").mkdir(parents=True)
    os.mkfifo(tmp_path / "runs" / "piped" / runs.HPARAMS_FILE)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    listed = subprocess.run(
        [sys.executable, "-m", "spamtune", "runs", "--json", "--data-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)] == ["piped"]


def test_a_metrics_file_with_bytes_that_are_not_utf8_loses_only_those_lines(tmp_path):
    """A damaged metrics.jsonl stopped the whole listing ("unexpected UnicodeDecodeError")."""
    run_dir = tmp_path / "runs" / "damaged"
    run_dir.mkdir(parents=True)
    (run_dir / runs.HPARAMS_FILE).write_text(json.dumps({"model": "tiny", "trainable": "all"}))
    good = json.dumps({"step": 5, "validation_loss": 0.3, "validation_accuracy": 0.9}).encode()
    (run_dir / runs.METRICS_FILE).write_bytes(b"\xff\xfe{\n" + good + b"\n")
    listed = invoke("runs", "--json", "--data-dir", str(tmp_path))
    assert listed.exit_code == 0, listed.stderr
    assert [(r["name"], r["validation_accuracy"]) for r in json.loads(listed.stdout)] == [("damaged", 0.9)]
    shown = invoke("runs", "show", "damaged", "--json", "--data-dir", str(tmp_path))
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["evaluations"] == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_in_place_of_a_runs_metrics_does_not_stop_runs_show(tmp_path):
    """In a process of its own, bounded: the read waited for a writer for ever."""
    import subprocess
    import sys

    from conftest import REPO

    run_dir = tmp_path / "runs" / "piped"
    run_dir.mkdir(parents=True)
    (run_dir / runs.HPARAMS_FILE).write_text("{}")
    os.mkfifo(run_dir / runs.METRICS_FILE)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shown = subprocess.run(
        [sys.executable, "-m", "spamtune", "runs", "show", "piped", "--json", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["evaluations"] == 0


def test_a_damaged_summary_leaves_the_listing_valid_and_whole(tmp_path, monkeypatch):
    """A summary.json edited by hand or damaged holds anything: NaN (which only Python's JSON
    reader takes), strings or objects where figures and names go. The listing shows those as
    unknown rather than failing on a terminal or writing JSON that jq refuses."""
    odd = tmp_path / "runs" / "odd"
    odd.mkdir(parents=True)
    (odd / runs.HPARAMS_FILE).write_text(json.dumps({"model": "tiny", "trainable": "all"}))
    (odd / runs.SUMMARY_FILE).write_text(
        '{"validation_accuracy": NaN, "test_accuracy": "x", "test_loss": Infinity, "model": {"a": 1}, "trainable": [1]}'
    )
    (odd / runs.METRICS_FILE).write_text(json.dumps({"step": 5, "validation_loss": 0.3, "validation_accuracy": 0.9}) + "\n")

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))

    (listed,) = strict(invoke("runs", "--json", "--data-dir", str(tmp_path)).stdout)
    assert (listed["model"], listed["trainable"]) == ("tiny", "all")  # from hparams.json
    assert listed["validation_accuracy"] == 0.9 and listed["test_accuracy"] is None  # from metrics.jsonl
    shown = strict(invoke("runs", "show", "odd", "--json", "--data-dir", str(tmp_path)).stdout)
    assert shown["summary"]["test_loss"] is None and shown["summary"]["test_accuracy"] == "x"
    monkeypatch.setattr(runs_cli, "_stdout_is_terminal", lambda: True)
    table = invoke("runs", "--data-dir", str(tmp_path))
    assert table.exit_code == 0, table.stderr
    assert next(line for line in table.stdout.splitlines() if line.startswith("odd ")).split()[1:5] == ["finished", "tiny", "all", "90.00%"]


def test_rm_of_a_folder_elsewhere_holding_more_than_a_run_is_refused(root, tmp_path, monkeypatch):
    """A project folder with a config.json (a run file's name) is not a run to delete."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    (project / "src" / "main.py").write_text("print('keep me')\n")
    monkeypatch.chdir(tmp_path)
    for given in (str(project), "project"):
        refused = invoke("runs", "rm", given, str(root / "runs" / "crashed"), "--yes", "--data-dir", str(root))
        assert (refused.exit_code, refused.stdout) == (1, "")
        assert refused.stderr == (
            f"Error: {project} holds src, which no spamtune run holds, so it is not removed; "
            "delete it by hand if it really is to go\n"
        )
        assert (project / "src" / "main.py").is_file() and (root / "runs" / "crashed").is_dir()  # nothing removed
    # a run copied out of the data root holds only run files (and hidden ones): it goes
    copied = tmp_path / "copied"
    shutil.copytree(root / "runs" / "done", copied)
    (copied / runs.LOCK_FILE).touch()
    removed = invoke("runs", "rm", str(copied), "--yes", "--data-dir", str(root))
    assert removed.exit_code == 0 and removed.stdout == f"{copied}\n" and not copied.exists()
    # inside <root>/runs a run folder is the user's to fill: it goes whatever it holds
    (root / "runs" / "done" / "notes.txt").write_text("mine")
    assert invoke("runs", "rm", "done", "--yes", "--data-dir", str(root)).exit_code == 0
