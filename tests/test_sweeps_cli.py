"""``spamtune sweeps``: the sweeps of a data root listed, one shown again, some removed."""

import json
import shutil

import pytest
from helpers import tiny_options, write_tiny_data
from typer.testing import CliRunner

from spamtune import runs
from spamtune.cli import app
from spamtune.sweep import SWEEP_FILE, run_sweep


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, [str(arg) for arg in args], **kwargs)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A data root holding one real sweep of two tiny runs, in its default folder."""
    root = write_tiny_data(tmp_path_factory.mktemp("swept"))
    result = run_sweep(tiny_options(root, epochs=1), {"lr": [1e-3, 3e-3]})
    return root, result


@pytest.fixture
def root(swept, tmp_path):
    """A copy of the swept data root, for a test to change."""
    copy = tmp_path / "root"
    shutil.copytree(swept[0], copy)
    sweep = next((copy / "sweeps").iterdir())
    # The rows record their runs' paths in the original; a copy is found by its folder.
    return copy, sweep


def test_the_listing_gives_each_sweep_its_status_counts_and_best_run(root):
    root, sweep = root
    table = json.loads((sweep / SWEEP_FILE).read_text())
    best = min((r for r in table["runs"]), key=lambda r: r["validation_loss"])
    listed = invoke("sweeps", "--json", "--data-dir", root)
    assert listed.exit_code == 0, listed.output
    [info] = json.loads(listed.stdout)
    assert (info["name"], info["status"], info["runs"], info["done"], info["failed"]) == (sweep.name, "finished", 2, 2, 0)
    assert info["swept"] == ["lr"] and info["best"] == best["name"] == table["best"]
    assert info["best_path"] == str(sweep / best["name"])  # where the run is now, not where it was made
    assert info["best_validation_loss"] == best["validation_loss"] and info["best_test_accuracy"] == best["test_accuracy"]
    assert info["size_bytes"] == sum(p.stat().st_size for p in sweep.rglob("*") if p.is_file() and not p.is_symlink())
    # In a pipe: TSV with a header; the best run named there is one predict can take.
    tsv = invoke("sweeps", "--data-dir", root).stdout.splitlines()
    header, row = tsv[0].split("\t"), tsv[1].split("\t")
    assert len(tsv) == 2 and dict(zip(header, row))["best"] == best["name"]
    assert runs.is_classifier_dir(sweep / best["name"])


def test_show_ranks_the_runs_by_validation_loss_as_the_sweep_did(root):
    root, sweep = root
    table = json.loads((sweep / SWEEP_FILE).read_text())
    hash_only = sweep.name.removeprefix("sweep-")[:6]  # a start of the hash names the sweep too
    shown = invoke("sweeps", "show", hash_only, "--json", "--data-dir", root)
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.stdout)
    assert [r["name"] for r in record["runs"]] == [r["name"] for r in sorted(table["runs"], key=lambda r: r["validation_loss"])]
    assert record["best"] == table["best"] and record["status"] == "finished"
    lines = invoke("sweeps", "show", "--data-dir", root).stdout.splitlines()  # the newest sweep
    header = lines[0].split("\t")
    assert header[:2] == ["best", "lr"] and len(lines) == 3
    first = dict(zip(header, lines[1].split("\t")))
    assert first["best"] == "best" and first["name"] == table["best"] and float(first["lr"]) in (1e-3, 3e-3)
    by_path = invoke("sweeps", "show", sweep / SWEEP_FILE, "--json")
    assert json.loads(by_path.stdout)["runs"] == record["runs"]


def test_a_sweep_with_runs_to_go_is_interrupted_and_one_held_is_running(root):
    root, sweep = root
    table = json.loads((sweep / SWEEP_FILE).read_text())
    table["runs"][-1]["status"] = "pending"
    (sweep / SWEEP_FILE).write_text(json.dumps(table))
    [info] = json.loads(invoke("sweeps", "--json", "--data-dir", root).stdout)
    assert (info["status"], info["done"], info["runs"]) == ("interrupted", 1, 2)
    lock = runs.hold_folder(sweep, lambda folder: AssertionError(folder), "the sweep folder")
    try:
        [info] = json.loads(invoke("sweeps", "--json", "--data-dir", root).stdout)
        assert info["status"] == "running"
        removed = invoke("sweeps", "rm", sweep.name, "--yes", "--data-dir", root)
        assert removed.exit_code == 1 and "a sweep is running in it" in removed.stderr and sweep.is_dir()
    finally:
        lock.release()


def test_a_damaged_or_tampered_sweep_file_is_listed_not_trusted(root):
    root, sweep = root
    table = json.loads((sweep / SWEEP_FILE).read_text())
    good = table["runs"][0]
    table["runs"] = [
        {**good, "name": "../../elsewhere"},  # a path out of the folder is no run name
        {**good, "validation_loss": float("nan")},  # a done run the table cannot rank
        "not a row",
        table["runs"][1],
    ]
    (sweep / SWEEP_FILE).write_text(json.dumps(table))
    record = json.loads(invoke("sweeps", "show", sweep, "--json").stdout)
    assert [r["name"] for r in record["runs"]] == [table["runs"][3]["name"]]
    assert all(r["run"].startswith(str(sweep) + "/") for r in record["runs"])
    (sweep / SWEEP_FILE).write_text("{not json")
    [info] = json.loads(invoke("sweeps", "--json", "--data-dir", root).stdout)
    assert info["status"] == "damaged" and info["best"] is None
    shown = invoke("sweeps", "show", sweep)
    assert shown.exit_code == 1 and shown.stderr.count("\n") == 1 and "Traceback" not in shown.output
    assert f"cannot read sweep file {sweep / SWEEP_FILE}" in shown.stderr


def test_names_that_find_no_sweep_or_several_are_one_line(root, tmp_path):
    root, sweep = root
    shutil.copytree(sweep, root / "sweeps" / (sweep.name + "-copy"))
    for name, code, said in (
        (sweep.name[:8], 1, "names 2 sweeps"),
        ("nothing", 1, "no sweep named 'nothing'"),
        (tmp_path, 1, "is not a sweep folder"),
    ):
        result = invoke("sweeps", "show", name, "--data-dir", root)
        assert result.exit_code == code and said in result.stderr and result.stderr.count("\n") == 1, result.output
    assert invoke("sweeps", "show", "", "--data-dir", root).exit_code == 1
    assert invoke("sweeps", "rm", "", "--yes", "--data-dir", root).exit_code == 2
    empty = invoke("sweeps", "show", "--data-dir", tmp_path / "empty")
    assert empty.exit_code == 1 and "no sweeps in" in empty.stderr


def test_rm_removes_a_sweep_with_its_runs_once_and_only_a_sweeps_folder(root):
    root, sweep = root
    refused = invoke("sweeps", "rm", sweep.name, "--data-dir", root, input="")
    assert refused.exit_code == 2 and "without --yes" in refused.stderr and sweep.is_dir()
    (sweep / "notes.txt").write_text("mine")
    foreign = invoke("sweeps", "rm", sweep.name, "--yes", "--data-dir", root)
    assert foreign.exit_code == 1 and "holds notes.txt" in foreign.stderr and (sweep / "notes.txt").is_file()
    (sweep / "notes.txt").unlink()
    first, last = sorted(p for p in sweep.iterdir() if p.is_dir())
    training = runs.lock_run_dir(last)  # a `finetune --resume` of one of its runs
    try:
        busy = invoke("sweeps", "rm", sweep.name, "--yes", "--data-dir", root)
        assert busy.exit_code == 1 and "a process is training in it" in busy.stderr and last.is_dir()
    finally:
        runs.release_finished(last)
        training.release()
    assert not (first / runs.LOCK_FILE).exists()  # the finished run locked on the way is left as it was
    removed = invoke("sweeps", "rm", sweep.name, sweep, "--yes", "--data-dir", root)  # named twice: removed once
    assert removed.exit_code == 0, removed.output
    assert removed.stdout.splitlines() == [str(sweep)] and not sweep.exists()
    assert list((root / "sweeps").iterdir()) == []  # no hidden leftover either
    assert "used by no run now" in removed.stderr  # the random base its runs shared


def test_hand_edited_figures_and_option_names_neither_fail_nor_split_the_listing(root):
    root, sweep = root
    table = json.loads((sweep / SWEEP_FILE).read_text())
    table["runs"][0]["wall_time_s"] = 10**400  # valid JSON, too large for a float
    table["runs"][0]["overrides"] = {"a\tb\nc": 1}  # an option name no sweep writes
    (sweep / SWEEP_FILE).write_text(json.dumps(table))
    listed = invoke("sweeps", "--json", "--data-dir", root)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)[0]["runs"] == 2
    shown = invoke("sweeps", "show", sweep.name, "--data-dir", root)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert len(lines) == 3 and {len(line.split("\t")) for line in lines} == {len(lines[0].split("\t"))}
    edited = next(dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:] if table["runs"][0]["name"] in line)
    assert edited["wall_time_s"] == "" and edited["a b c"] == "1"  # no figure, and the name on one line


def test_rm_of_a_link_to_a_sweep_removes_the_link_alone(root, tmp_path):
    root, sweep = root
    kept = tmp_path / "kept-sweep"
    shutil.move(sweep, kept)
    link = tmp_path / "link"
    link.symlink_to(kept, target_is_directory=True)
    from spamtune.cli import sweeps as sweeps_cli

    with pytest.MonkeyPatch.context() as patch:  # asked on a terminal: what goes, and what is freed
        patch.setattr(sweeps_cli, "_stdin_is_terminal", lambda: True)
        asked = invoke("sweeps", "rm", link, "--data-dir", root, input="n\n")
    assert asked.exit_code == 1 and link.is_symlink() and "nothing removed" in asked.stderr
    assert f"a symbolic link to {kept}: the link alone is removed" in asked.stderr and "(0 B)?" in asked.stderr
    removed = invoke("sweeps", "rm", link, "--yes", "--data-dir", root)
    assert removed.exit_code == 0, removed.output
    assert removed.stdout.splitlines() == [str(link)] and not link.is_symlink() and not link.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert (kept / SWEEP_FILE).is_file()
    assert [p for p in kept.rglob(runs.LOCK_FILE) if p.parent != kept] == []  # its finished runs left unlocked
    link.symlink_to(kept, target_is_directory=True)
    both = invoke("sweeps", "rm", link, kept, "--yes", "--data-dir", root)  # the link and the sweep: both go
    assert both.exit_code == 0 and both.stdout.splitlines() == [str(link), str(kept)], both.output
    assert not link.is_symlink() and not kept.exists()


def test_a_path_under_the_home_of_no_user_is_one_line(tmp_path):
    for args in (("sweeps", "show"), ("sweeps", "rm", "--yes")):
        result = invoke(*args, "~no-such-user-spamtune/sweep", "--data-dir", tmp_path)
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
        assert "no home folder for ~no-such-user-spamtune" in result.stderr and "unexpected" not in result.stderr


def test_show_json_stays_json_whatever_values_sweep_json_was_edited_to(root):
    """Python's json reads NaN and Infinity: written back, no JSON reader took the output."""
    root, sweep = root
    table = json.loads((sweep / SWEEP_FILE).read_text())
    table["runs"][0]["overrides"] = {"lr": float("nan"), "seed": float("inf"), "nested": {"a": [1]}, "epochs": 2}
    (sweep / SWEEP_FILE).write_text(json.dumps(table))
    shown = invoke("sweeps", "show", sweep, "--json")
    assert shown.exit_code == 0, shown.output

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON output")

    record = json.loads(shown.stdout, parse_constant=refuse)
    [edited] = [r for r in record["runs"] if r["name"] == table["runs"][0]["name"]]
    assert edited["overrides"] == {"epochs": 2}


def test_a_removal_cut_short_is_not_listed_as_a_sweep(root):
    """sweeps rm renames a sweep to a hidden folder, then deletes it: cut short there (Ctrl-C,
    a file it could not delete), the folder still holds sweep.json, and was listed as a sweep."""
    root, sweep = root
    shutil.copytree(sweep, sweep.with_name(f".{sweep.name}.removing-0123abcd"))
    shutil.rmtree(sweep)
    listed = invoke("sweeps", "--json", "--data-dir", root)
    assert listed.exit_code == 0 and json.loads(listed.stdout) == [], listed.output
    shown = invoke("sweeps", "show", "--data-dir", root)
    assert shown.exit_code == 1 and "no sweeps in" in shown.stderr
    assert invoke("sweeps", "show", f".{sweep.name}", "--data-dir", root).exit_code == 1


def test_rm_of_a_folder_elsewhere_asks_its_runs_to_be_runs_only(root, tmp_path):
    """A sweep.json copied beside Hugging Face model folders (each with a config.json, a file a
    run writes) made the folder a sweep to remove, models and all."""
    root, sweep = root
    models = tmp_path / "models"
    (models / "bert").mkdir(parents=True)
    shutil.copy(sweep / SWEEP_FILE, models / SWEEP_FILE)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (models / "bert" / name).write_text("{}")
    refused = invoke("sweeps", "rm", models, "--yes", "--data-dir", root)
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1, refused.output
    assert "holds tokenizer.json" in refused.stderr and (models / "bert" / "tokenizer.json").is_file()
    moved = tmp_path / "moved-sweep"  # a real sweep moved out of the data root still goes
    shutil.move(sweep, moved)
    removed = invoke("sweeps", "rm", moved, "--yes", "--data-dir", root)
    assert removed.exit_code == 0 and not moved.exists(), removed.output


def test_a_failed_run_is_counted_and_shown_with_why_it_failed(root):
    root, sweep = root
    table = json.loads((sweep / SWEEP_FILE).read_text())
    failed = table["runs"][1]
    failed.update(status="failed", error="training loss became nan at step 3", validation_loss=None, validation_accuracy=None)
    (sweep / SWEEP_FILE).write_text(json.dumps(table))
    [info] = json.loads(invoke("sweeps", "--json", "--data-dir", root).stdout)
    assert (info["done"], info["failed"], info["status"], info["best"]) == (1, 1, "finished", table["runs"][0]["name"])
    lines = invoke("sweeps", "show", sweep).stdout.splitlines()
    rows = [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]
    assert [(r["name"], r["status"], r["error"]) for r in rows] == [
        (table["runs"][0]["name"], "done", ""), (failed["name"], "failed", "training loss became nan at step 3"),
    ]
