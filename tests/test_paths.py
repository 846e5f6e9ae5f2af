"""The data root and run names: where spamtune looks, and what it says when nothing is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spamtune import paths, runs
from spamtune.errors import SpamtuneError

T0 = 1_700_000_000


def make_run(root: Path, name: str, age: int, *, weights: bool = True, summary: bool = False, resume: bool = False) -> Path:
    """A run folder whose weights were written ``age`` seconds after T0."""
    run = paths.runs_dir(root) / name
    run.mkdir(parents=True)
    if weights:
        (run / "model.safetensors").write_bytes(b"weights")
        (run / "config.json").write_text("{}")
        os.utime(run / "model.safetensors", (T0 + age, T0 + age))
    if summary:
        (run / runs.SUMMARY_FILE).write_text("{}")
    if resume:
        (run / runs.RESUME_DIR).mkdir()
    return run


# ---------------------------------------------------------------- the data root


def test_data_root_is_the_option_then_the_environment_then_the_user_data_folder(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real default_data_root, not conftest's private one
    monkeypatch.delenv(paths.ENV_HOME, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    from platformdirs import user_data_path

    assert paths.data_root() == user_data_path("spamtune", appauthor=False).absolute()
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert paths.data_root() == tmp_path / "xdg" / "spamtune"
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "home"))
    assert paths.data_root() == tmp_path / "home"
    assert paths.data_root(tmp_path / "given") == tmp_path / "given"
    assert paths.data_root_source(tmp_path) == "--data-dir" and paths.data_root_source() == "$SPAMTUNE_HOME"


def test_data_root_is_absolute_wherever_it_was_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.data_root("rel") == tmp_path / "rel"
    monkeypatch.setenv(paths.ENV_HOME, "rel2")
    assert paths.data_root() == tmp_path / "rel2"
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert paths.data_root("~/data") == tmp_path / "me" / "data"


# ---------------------------------------------------------------- the default run


def test_a_finished_run_wins_over_newer_unfinished_ones(tmp_path):
    finished = make_run(tmp_path, "a-finished", 10, summary=True)
    make_run(tmp_path, "b-still-training", 20, resume=True)  # best checkpoint so far, no summary
    make_run(tmp_path, "c-just-started", 30, weights=False)  # folder created, nothing in it yet
    make_run(tmp_path, "d-crashed-at-the-end", 40, summary=True, resume=True)  # resumable, so unfinished
    assert paths.latest_run(tmp_path) == finished
    assert paths.resolve_run(None, tmp_path) == finished


def test_the_newest_finished_run_is_taken(tmp_path):
    make_run(tmp_path, "z-old", 10, summary=True)
    newer = make_run(tmp_path, "a-new", 20, summary=True)
    make_run(tmp_path, "m-unfinished", 30)
    assert paths.latest_run(tmp_path) == newer


def test_without_a_finished_run_the_newest_with_weights_is_taken(tmp_path):
    make_run(tmp_path, "old", 10)
    newer = make_run(tmp_path, "new", 20, resume=True)
    make_run(tmp_path, "empty", 30, weights=False)
    (paths.runs_dir(tmp_path) / "stray.txt").write_text("not a run")
    assert paths.latest_run(tmp_path) == newer


def test_no_run_with_weights_is_one_clear_error_that_says_how_to_look_elsewhere(tmp_path):
    expected = (
        rf"no fine-tuned model found in {tmp_path}/runs; run `spamtune finetune` first, "
        r"or to use another data root, pass --data-dir DIR or set SPAMTUNE_HOME=DIR"
    )
    with pytest.raises(SpamtuneError, match=expected):
        paths.latest_run(tmp_path)  # no runs folder at all
    make_run(tmp_path, "empty", 10, weights=False)
    with pytest.raises(SpamtuneError, match=expected):
        paths.latest_run(tmp_path)


# ---------------------------------------------------------------- naming a run


def test_a_bare_name_is_a_run_under_the_data_root(tmp_path, monkeypatch):
    run = make_run(tmp_path / "root", "20261125-101500-tiny-all", 10)
    monkeypatch.chdir(tmp_path)
    assert paths.resolve_run("20261125-101500-tiny-all", tmp_path / "root") == run
    (tmp_path / "20261125-101500-tiny-all").mkdir()  # the data root's run wins over a local folder
    assert paths.resolve_run("20261125-101500-tiny-all", tmp_path / "root") == run


def test_a_path_is_a_path_and_a_bare_name_falls_back_to_the_working_directory(tmp_path, monkeypatch):
    root = tmp_path / "root"
    make_run(root, "local", 10)
    elsewhere = make_run(tmp_path / "other", "local", 10)
    monkeypatch.chdir(tmp_path / "other" / "runs")
    assert paths.resolve_run("./local", root) == elsewhere  # a path, even though runs/local exists
    assert paths.resolve_run(str(elsewhere), root) == elsewhere
    (tmp_path / "other" / "runs" / "onlyhere").mkdir()  # not under the data root: the local folder
    assert paths.resolve_run("onlyhere", root) == tmp_path / "other" / "runs" / "onlyhere"


def test_a_missing_run_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpamtuneError) as named:
        paths.resolve_run("nope", tmp_path / "root")
    assert str(named.value) == (
        f"run folder not found: no run named 'nope' in {tmp_path / 'root' / 'runs'} (`spamtune runs` lists them), "
        f"nor a folder {tmp_path / 'nope'}; to use another data root, pass --data-dir DIR or set SPAMTUNE_HOME=DIR"
    )
    with pytest.raises(SpamtuneError, match=f"run folder not found: {tmp_path / 'sub' / 'nope'}$"):
        paths.resolve_run("sub/nope", tmp_path / "root")


@pytest.mark.parametrize(("text", "bare"), [("run-1", True), ("./run-1", False), ("runs/x", False), ("/x", False), ("~x", False), ("..", False), ("", False)])
def test_what_counts_as_a_bare_name(text, bare):
    assert paths.is_bare_name(text) is bare


def test_run_folders_lists_what_training_created(tmp_path):
    a = make_run(tmp_path, "a", 10, summary=True)
    b = make_run(tmp_path, "b", 20, weights=False, resume=True)
    (paths.runs_dir(tmp_path) / "c-empty").mkdir()
    (paths.runs_dir(tmp_path) / ".d-hidden").mkdir()
    (paths.runs_dir(tmp_path) / ".d-hidden" / runs.HPARAMS_FILE).write_text("{}")
    assert paths.run_folders(tmp_path) == [a, b]
    assert paths.run_folders(tmp_path / "nowhere") == []



def test_a_file_given_as_the_run_says_it_is_a_file(tmp_path):
    """`predict --run classifier.safetensors` (an export) exists: "not found" would mislead."""
    exported = tmp_path / "classifier.safetensors"
    exported.write_bytes(b"x")
    with pytest.raises(SpamtuneError, match=f"^{exported} is a file, not a run folder; give the run folder"):
        paths.resolve_run(str(exported), tmp_path / "root")
