"""`spamtune bases ls|rm`: the stored bases, the runs on each, and removing them safely."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import spamtune_without_torch, tiny_options, write_tiny_data
from typer.testing import CliRunner

from spamtune import train
from spamtune.base_catalog import list_bases, remove_bases
from spamtune.cli import app
from spamtune.errors import SpamtuneError, SpamtuneUsageError
from spamtune.infer import SpamClassifier
from spamtune.sweep import run_sweep

TEXTS = ["WIN a prize now!", "see you at lunch"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two runs and a sweep run on the seed-123 base; one run on seed 7 whose folder is gone."""
    root = write_tiny_data(tmp_path_factory.mktemp("data"))
    for name in ("a", "b"):
        train.finetune(tiny_options(root, epochs=1), root / "runs" / name)
    run_sweep(tiny_options(root, epochs=1), {"lr": [1e-3]})
    train.finetune(tiny_options(root, epochs=1, seed=7), root / "runs" / "gone")
    (root / "runs" / "gone" / "base.json").unlink()  # no longer a compact run: seed 7's base is unused
    return root


def bases(root, *args):
    return CliRunner().invoke(app, ["bases", *args, "--data-dir", str(root)])


def test_ls_shows_each_base_once_with_the_runs_that_use_it(root):
    stored = {base.origin["seed"]: base for base in list_bases(root)}
    assert set(stored) == {123, 7}
    used = stored[123]
    assert sorted(p.name for p in used.users) == ["a", "b", "lr-0.001"] and stored[7].users == []
    assert used.nbytes == used.path.stat().st_size and used.path.name == f"{used.sha256}.safetensors"
    text = bases(root, "ls")
    assert text.exit_code == 0 and text.stderr.startswith("2 base(s), ")
    line = next(row.split("\t") for row in text.stdout.splitlines() if row.startswith(used.sha256[:12]))
    assert line[2:] == ["random init (seed 123)", "3 runs", str(used.path)]
    rows = [json.loads(row) for row in bases(root, "ls", "--json").stdout.splitlines()]
    row = next(r for r in rows if r["sha256"] == used.sha256)
    assert row["bytes"] == used.nbytes and row["origin"]["seed"] == 123 and len(row["runs"]) == 3
    quiet = bases(root, "ls", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == text.stdout


def test_ls_writes_an_escape_sequence_in_a_path_as_an_escape(root, tmp_path):
    """The listing wrote a data root's name as it was: its escape sequence reached the terminal."""
    odd = tmp_path / "data\x1b]0;pwned\x07"
    shutil.copytree(root / "bases", odd / "bases")
    listed = bases(odd, "ls")
    assert listed.exit_code == 0 and "\x1b" not in listed.stdout and "\x07" not in listed.stdout
    assert len(listed.stdout.splitlines()) == 2
    assert all(line.split("\t")[4].startswith(str(tmp_path / "data\\x1b]0;pwned\\x07")) for line in listed.stdout.splitlines())


def test_ls_reads_each_base_s_origin_without_importing_torch(root):
    rows = [json.loads(row) for row in spamtune_without_torch("bases", "ls", "--json", "--data-dir", str(root)).stdout.splitlines()]
    assert sorted(row["origin"]["seed"] for row in rows) == [7, 123]
    assert sorted(len(row["runs"]) for row in rows) == [0, 3]


def test_rm_unused_keeps_what_runs_use_and_a_removed_base_comes_back_when_a_run_loads(root):
    before = SpamClassifier.load(root / "runs" / "a").predict(TEXTS)
    used = next(base for base in list_bases(root) if base.users)
    result = bases(root, "rm", "--unused")
    assert result.exit_code == 0 and [b.sha256 for b in list_bases(root)] == [used.sha256]
    gone = bases(root, "rm", used.sha256[:10].upper())
    assert gone.exit_code == 0 and gone.stdout.strip() == str(used.path) and not used.path.exists()
    assert "3 run(s) use" in gone.stderr and "rebuild it from its origin" in gone.stderr
    assert "WARNING" not in gone.stderr  # its seed draws it again here: nothing to fetch
    after = SpamClassifier.load(root / "runs" / "a").predict(TEXTS)  # the seed draws the same base again
    assert [(v.label, v.probability) for v in after] == [(v.label, v.probability) for v in before]


def test_bad_requests_are_one_line(tmp_path):
    root = write_tiny_data(tmp_path)
    assert bases(root, "rm").exit_code == 2
    both = bases(root, "rm", "--unused", "--all")
    assert both.exit_code == 2 and both.stderr == "Error: give one of base names, --unused and --all, not --unused and --all\n"
    with pytest.raises(SpamtuneError, match="no base named 'abc'"):
        remove_bases(root, ["abc"])
    folder = root / "bases"
    folder.mkdir()
    for digit in "01":  # two files whose names share a prefix, neither a readable base
        (folder / f"ab{digit * 62}.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SpamtuneUsageError, match="'ab' names 2 bases"):
        remove_bases(root, ["ab"])
    assert [base.describe() for base in list_bases(root)] == ["unreadable file", "unreadable file"]
    assert [base.sha256[:3] for base in remove_bases(root, ["ab1"])] == ["ab1"]
    # An empty name (a script's unset variable) is a usage error, as for `runs rm`, naming none.
    empty = bases(root, "rm", "")
    assert empty.exit_code == 2 and empty.stderr.startswith("Error: an empty base name") and len(list_bases(root)) == 1


def test_a_file_not_named_as_a_stored_base_is_never_listed_or_removed(tmp_path):
    # Any 64-character name ending .safetensors was taken for a base, and `rm --all` deleted it.
    folder = tmp_path / "bases"
    folder.mkdir(parents=True)
    theirs = [folder / f"{'my-gpt2-small-weights-copied-from-the-old-laptop-before-2026-kept':.64}.safetensors", folder / f"{'AB' * 32}.safetensors"]
    for path in theirs:
        path.write_bytes(b"mine")
    (folder / f"{'ab' * 32}.safetensors").write_bytes(b"not a safetensors file")
    assert [base.sha256 for base in list_bases(tmp_path)] == ["ab" * 32]
    assert bases(tmp_path, "rm", "--all").exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in theirs)


def test_a_base_that_cannot_be_removed_is_one_error_once_the_others_are_removed_and_printed(tmp_path, monkeypatch):
    """As `cache rm`: the files that went are printed, then one error line for the one that stayed."""
    from pathlib import Path

    from spamtune.cli.runs import human_size

    root = write_tiny_data(tmp_path)
    folder = root / "bases"
    folder.mkdir()
    kept, *others = [folder / f"{digit * 64}.safetensors" for digit in "abc"]
    for path in (kept, *others):
        path.write_bytes(b"not a safetensors file")
    unlink = Path.unlink

    def refuse(path, *args, **kwargs):
        if path == kept:
            raise PermissionError(1, "Operation not permitted", str(path))
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", refuse)
    result = bases(root, "rm", "--all")
    assert result.exit_code == 1 and sorted(result.stdout.splitlines()) == sorted(map(str, others))
    assert result.stderr.endswith(f"Error: cannot remove {kept}: Operation not permitted\n") and f"freed {human_size(2 * 22)}" in result.stderr
    assert [p.exists() for p in (kept, *others)] == [True, False, False]


def test_removing_a_base_runs_use_warns_even_under_quiet_when_it_must_be_fetched(tmp_path):
    """A downloaded GPT-2 or a weights file is not made again from a seed: that is worth a word."""
    import torch

    from spamtune.bases import store_base
    from spamtune.model import GPTConfig, GPTModel

    root = write_tiny_data(tmp_path)
    train.finetune(tiny_options(root, epochs=1), root / "runs" / "a")
    (stored,) = list_bases(root)
    torch.manual_seed(0)
    ref = store_base(root, GPTModel(GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_layers=1, n_heads=2)), {"kind": "pretrained", "name": "gpt2-small"})
    record = json.loads((root / "runs" / "a" / "base.json").read_text())
    record["base"] = ref.to_dict()
    (root / "runs" / "a" / "base.json").write_text(json.dumps(record))
    stored.path.unlink()
    result = CliRunner().invoke(app, ["bases", "rm", "-q", ref.sha256[:12], "--data-dir", str(root)])
    assert result.exit_code == 0
    assert result.stderr.startswith("WARNING: 1 run(s) use ") and "pretrained gpt2-small" in result.stderr
    assert "freed" not in result.stderr


def test_runs_show_names_a_compact_runs_base_and_runs_rm_says_when_the_last_user_goes(tmp_path):
    root = write_tiny_data(tmp_path)
    for name in ("a", "b"):
        train.finetune(tiny_options(root, epochs=1), root / "runs" / name)
    (stored,) = list_bases(root)
    shown = json.loads(CliRunner().invoke(app, ["runs", "show", "a", "--json", "--data-dir", str(root)]).stdout)
    assert shown["base"] == {"sha256": stored.sha256, "origin": stored.origin, "stored": True}
    text = CliRunner().invoke(app, ["runs", "show", "a", "--data-dir", str(root)]).stdout
    assert any(line.startswith("base.sha256 ") and line.endswith(stored.sha256) for line in text.splitlines())
    first = CliRunner().invoke(app, ["runs", "rm", "--yes", "a", "--data-dir", str(root)])
    assert first.exit_code == 0 and "used by no run" not in first.stderr  # b still uses it
    last = CliRunner().invoke(app, ["runs", "rm", "--yes", "b", "--data-dir", str(root)])
    assert last.exit_code == 0 and last.stdout.strip() == str(root / "runs" / "b")
    assert last.stderr.startswith("1 base(s) (") and last.stderr.endswith("are used by no run now; `spamtune bases rm --unused` frees them\n")
    assert stored.path.is_file()  # only said: freeing it is the user's call


def test_a_folder_where_a_base_goes_is_left_alone_and_said_while_runs_on_that_base_go_on(tmp_path):
    """No rename replaces a folder and spamtune removes none it did not make: a base its origin
    makes again is used from memory, with one warning naming the folder and how to clear it,
    until the folder is gone; then the base is stored again."""
    root = write_tiny_data(tmp_path)
    train.finetune(tiny_options(root, epochs=1), root / "runs" / "a")
    before = SpamClassifier.load(root / "runs" / "a").predict(TEXTS)
    (stored,) = list_bases(root)
    stored.path.unlink()
    stored.path.mkdir()
    (stored.path / "notes.txt").write_text("mine")
    clear = f"{stored.path} is a folder, which spamtune does not remove: move it away or remove it (rm -r {stored.path})"
    line = f"WARNING: base {stored.sha256[:12]}... (random init (seed 123)) is made again from its origin at each use and cannot be stored: {clear}\n"

    predicted = CliRunner().invoke(app, ["predict", "--run", str(root / "runs" / "a"), "-q", *TEXTS, "--data-dir", str(root)])
    assert predicted.exit_code == 0 and predicted.stderr == line
    assert [row.split("\t")[:2] for row in predicted.stdout.splitlines()] == [[v.label, f"{v.probability:.4f}"] for v in before]
    again = CliRunner().invoke(app, ["finetune", "--run", "b", "-q", "--data-dir", str(root), "--model", str(root / "tiny.json"),
                                     "--weights", "random", "--epochs", "1", "--device", "cpu", "--precision", "fp32"])  # fmt: skip
    assert again.exit_code == 0 and again.stderr == line  # stored, then compared with: said once
    listed = bases(root, "ls", "-q")
    assert (listed.exit_code, listed.stdout, listed.stderr) == (0, "", f"WARNING: not a base: {clear}\n")
    assert (stored.path / "notes.txt").read_text() == "mine"

    shutil.rmtree(stored.path)  # cleared: the next load stores the base again, and says nothing
    quiet = CliRunner().invoke(app, ["predict", "--run", str(root / "runs" / "b"), "-q", *TEXTS, "--data-dir", str(root)])
    assert quiet.exit_code == 0 and quiet.stderr == "" and stored.path.is_file()


def test_a_folder_where_a_base_goes_that_its_origin_cannot_make_again_is_one_line_on_how_to_get_it_back(tmp_path):
    import torch

    from spamtune.bases import load_base, store_base
    from spamtune.model import GPTConfig, GPTModel

    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_layers=1, n_heads=2))
    ref = store_base(tmp_path, model, {"kind": "pretrained", "name": "gpt2-small"})  # no download here to make it again
    path = tmp_path / "bases" / f"{ref.sha256}.safetensors"
    path.unlink()
    path.mkdir()
    with pytest.raises(SpamtuneError) as refused:
        load_base(tmp_path, ref)
    assert str(refused.value) == (
        f"base {ref.sha256[:12]}... (pretrained gpt2-small) is not stored: {path} is a folder, which spamtune does not remove: "
        f"move it away or remove it (rm -r {path}), then run `spamtune download model gpt2-small --data-dir {tmp_path}` to get it back"
    )
    assert path.is_dir()


def test_a_run_interrupted_before_it_wrote_a_classifier_keeps_its_base(tmp_path):
    """Stopped after its first checkpoint but before an evaluation, a run has no weights of its
    own yet; it still trains on its base when resumed, so the base is in use."""
    from spamtune import events, runs

    root = write_tiny_data(tmp_path)
    run_dir = root / "runs" / "cut"

    def ctrl_c(event):
        if isinstance(event, events.StepDone) and event.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(events.TrainingInterrupted):
        train.finetune(tiny_options(root, epochs=1), run_dir, on_event=ctrl_c)
    assert runs.resume_file(run_dir).is_file() and runs.weights_file(run_dir) is None
    (stored,) = list_bases(root)
    assert stored.users == [run_dir]
    assert remove_bases(root, unused=True) == [] and stored.path.is_file()
    listed = bases(root, "ls")
    assert listed.exit_code == 0 and listed.stdout.split("\t")[3] == "1 run"
    predicted = CliRunner().invoke(app, ["predict", "--run", str(run_dir), *TEXTS, "--data-dir", str(root)])
    assert predicted.exit_code == 1 and "was interrupted before it wrote a classifier" in predicted.stderr
    train.resume_finetune(run_dir)
    assert [base.users for base in list_bases(root)] == [[run_dir]]


def test_a_run_in_progress_keeps_its_base_from_its_first_step(tmp_path):
    from spamtune import events

    root = write_tiny_data(tmp_path)
    run_dir = root / "runs" / "busy"
    seen = []

    def clean_up_meanwhile(event):
        if isinstance(event, events.StepDone) and event.step == 1:
            seen.append(([base.users for base in list_bases(root)], remove_bases(root, unused=True)))

    train.finetune(tiny_options(root, epochs=1), run_dir, on_event=clean_up_meanwhile)
    assert seen == [([[run_dir]], [])]
    (stored,) = list_bases(root)
    assert stored.users == [run_dir] and stored.path.is_file()


def test_ls_says_when_bases_is_no_folder(tmp_path):
    root = write_tiny_data(tmp_path)
    (root / "bases").write_text("")  # a file where the folder goes: nothing listed, and why
    listed = bases(root, "ls", "-q")
    assert (listed.exit_code, listed.stdout) == (0, "")
    assert listed.stderr == f"WARNING: {root / 'bases'} is not a folder, so no base can be stored there: runs make theirs again at each use; move it away\n"
