"""The default run of `evaluate` and `predict`: the newest finished one, not the newest folder."""

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


def test_a_finished_run_wins_over_newer_unfinished_ones(tmp_path):
    finished = make_run(tmp_path, "a-finished", 10, summary=True)
    make_run(tmp_path, "b-still-training", 20, resume=True)  # best checkpoint so far, no summary
    make_run(tmp_path, "c-just-started", 30, weights=False)  # folder created, nothing in it yet
    make_run(tmp_path, "d-crashed-at-the-end", 40, summary=True, resume=True)  # resumable, so unfinished
    assert paths.latest_run(tmp_path) == finished


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


def test_no_run_with_weights_is_one_clear_error(tmp_path):
    with pytest.raises(SpamtuneError, match="no fine-tuned model found"):
        paths.latest_run(tmp_path)  # no runs folder at all
    make_run(tmp_path, "empty", 10, weights=False)
    with pytest.raises(SpamtuneError, match=r"no fine-tuned model found in .*runs; run `spamtune finetune` first"):
        paths.latest_run(tmp_path)
