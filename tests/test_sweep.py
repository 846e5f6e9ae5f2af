"""Sweeps: the grid, run folders, and resuming after an interruption."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from helpers import checkpointed_after_an_evaluation, sigterm_once_ready, tiny_options, write_tiny_data

from spamtune import runs, train
from spamtune.errors import SpamtuneError, SpamtuneUsageError
from spamtune.sweep import SWEEP_FILE, combinations, parse_grid, run_name, run_sweep, sweep_id


def test_grid_values_are_typed_like_the_options():
    grid = parse_grid(train.FinetuneOptions, {"lr": "1e-5, 5e-5", "trainable": "last-block,all", "patience": "none,2", "shortcuts": "true,off"})
    assert grid == {"lr": [1e-5, 5e-5], "trainable": ["last-block", "all"], "patience": [None, 2], "shortcuts": [True, False]}
    with pytest.raises(SpamtuneUsageError, match="--epochs: 'x' is not a valid int"):
        parse_grid(train.FinetuneOptions, {"epochs": "1,x"})
    with pytest.raises(SpamtuneUsageError, match="lists a value twice"):
        parse_grid(train.FinetuneOptions, {"lr": "1e-5,0.00001"})
    for listed in ("0.0,-0.0", "-0.0,0"):  # one value: -0.0 == 0.0
        with pytest.raises(SpamtuneUsageError, match="--weight-decay lists a value twice"):
            parse_grid(train.FinetuneOptions, {"weight_decay": listed})
    with pytest.raises(SpamtuneUsageError, match="cannot vary 'colour'"):
        parse_grid(train.FinetuneOptions, {"colour": "red"})


def test_a_value_holding_a_comma_escapes_it_and_a_stray_comma_is_no_value():
    grid = parse_grid(train.FinetuneOptions, {"model": "cfg\\,v2.json,C:\\data\\x.json", "trainable": "all"})
    assert grid == {"model": ["cfg,v2.json", "C:\\data\\x.json"], "trainable": ["all"]}
    for listed in ("128,", ",128", "128,,256", "128, "):  # "128," made a second run with no --max-length
        with pytest.raises(SpamtuneUsageError, match=f"--max-length {listed!r} lists an empty value"):
            parse_grid(train.FinetuneOptions, {"max_length": listed})
    assert parse_grid(train.FinetuneOptions, {"max_length": "none,128"}) == {"max_length": [None, 128]}


@pytest.mark.parametrize("name", ["max_length", "patience", "clip_grad_norm", "lr"])
def test_an_empty_value_alone_is_a_usage_error_not_the_default(name):
    for empty in ("", " "):
        with pytest.raises(SpamtuneUsageError, match=f"--{name.replace('_', '-')}: '' is not a valid"):
            parse_grid(train.FinetuneOptions, {name: empty})


@pytest.mark.parametrize("name, listed", [("max_length", "128,"), ("lr", "1e-4,,"), ("epochs", ",2"), ("trainable", "head,"), ("patience", "2,")])
def test_a_stray_comma_is_told_a_fix_that_the_option_takes(name, listed):
    with pytest.raises(SpamtuneUsageError, match="lists an empty value") as caught:
        parse_grid(train.FinetuneOptions, {name: listed})
    advice = str(caught.value).rsplit("; ", 1)[1]
    # What the error advises, done, must parse: "--lr 1e-4,none" is no float.
    parts = listed.split(",")
    mended = [p for p in parts if p] if advice == "remove the stray comma" else [p or "none" for p in parts]
    assert advice in ("remove the stray comma", "write none for the option's default")
    assert len(parse_grid(train.FinetuneOptions, {name: ",".join(mended)})[name]) == len(mended)


def test_the_cli_reads_a_path_holding_a_comma_as_one_value(tmp_path):
    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path)
    (root / "a,b").mkdir()
    shutil.copy(root / "tiny.json", root / "a,b" / "tiny.json")
    args = ["sweep", "--model", str(root / "a\\,b" / "tiny.json"), "--weights", "random", "--epochs", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--precision", "fp32", "--lr", "1e30", "--data-dir", str(root)])
    assert "Traceback" not in result.stderr
    table = json.loads(open(result.stdout.strip()).read())
    assert table["base_options"]["model"] == str(root / "a,b" / "tiny.json") and table["grid"] == {}
    assert [row["status"] for row in table["runs"]] == ["failed"] and "training loss became nan" in table["runs"][0]["error"]


def test_combinations_and_their_names():
    combos = combinations({"lr": [1e-5, 1e-4], "trainable": ["last-block", "last-2-blocks"]})
    assert combos == [
        {"lr": 1e-5, "trainable": "last-block"}, {"lr": 1e-5, "trainable": "last-2-blocks"},
        {"lr": 1e-4, "trainable": "last-block"}, {"lr": 1e-4, "trainable": "last-2-blocks"},
    ]  # fmt: skip
    assert [run_name(c) for c in combos][:2] == ["lr-1e-05_trainable-last-block", "lr-1e-05_trainable-last-2-blocks"]
    assert run_name({"model": "../x/tiny.json"}) == "model-x-tiny.json"


def test_a_negative_value_names_another_folder_than_its_opposite():
    assert run_name({"seed": -1}) == "seed--1" and run_name({"seed": 1}) == "seed-1"
    assert run_name({"lr": 1e-3, "seed": -7}) == "lr-0.001_seed--7"
    assert run_name({"shortcuts": False, "clip_grad_norm": None}) == "shortcuts-False_clip_grad_norm-None"


def test_a_sweep_of_the_same_runs_finds_its_folder_whatever_the_order_of_its_values(tmp_path):
    base = tiny_options(tmp_path)
    listed = {"lr": [1e-4, 1e-3], "trainable": ["last-block", "lora"], "clip_grad_norm": [None, 1.0]}
    shuffled = {"trainable": ["lora", "last-block"], "clip_grad_norm": [1.0, None], "lr": [1e-3, 1e-4]}
    assert sweep_id(base, listed) == sweep_id(base, shuffled)
    assert sweep_id(base, listed) != sweep_id(base, {**listed, "lr": [1e-4, 2e-3]})
    # In that order the hash is the one a sweep folder was named with before the order stopped counting.
    import hashlib
    import json
    from dataclasses import asdict

    identity = {k: v for k, v in asdict(base).items() if k not in ("device", "data_dir")}
    before = hashlib.sha256(json.dumps({"base": identity, "grid": listed}, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert sweep_id(base, listed) == before


def test_sweep_id_ignores_where_it_computes(tmp_path):
    base = tiny_options(tmp_path)
    grid = {"lr": [1e-3]}
    assert sweep_id(base, grid) == sweep_id(tiny_options(tmp_path, device="cuda"), grid)
    assert sweep_id(base, grid) != sweep_id(tiny_options(tmp_path, epochs=3), grid)
    assert sweep_id(base, grid) != sweep_id(base, {"lr": [2e-3]})


def test_an_interrupted_sweep_keeps_finished_runs_and_resumes(tmp_path):
    root = write_tiny_data(tmp_path)
    base = tiny_options(root, epochs=2)
    grid = {"lr": [1e-3, 3e-3]}
    calls = []

    def counting(fn, label):
        def wrapper(*args, **kwargs):
            calls.append(label)
            return fn(*args, **kwargs)

        return wrapper

    def stop_second_run(event):
        if isinstance(event, train.StepDone) and len(calls) == 2 and event.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(train.TrainingInterrupted):
        run_sweep(base, grid, on_event=stop_second_run, finetune=counting(train.finetune, "new"))
    folder = root / "sweeps" / f"sweep-{sweep_id(base, grid)}"
    first = json.loads((folder / SWEEP_FILE).read_text())
    # Every combination has its row; the one Ctrl-C stopped resumes next time.
    assert [(r["name"], r["status"]) for r in first["runs"]] == [("lr-0.001", "done"), ("lr-0.003", "interrupted")]
    assert first["best"] == "lr-0.001"
    assert (folder / "lr-0.003" / "resume").is_dir()

    calls.clear()
    result = run_sweep(base, grid, finetune=counting(train.finetune, "new"), resume_finetune=counting(train.resume_finetune, "resume"))
    assert calls == ["resume"]  # the finished run is skipped, the interrupted one resumed
    assert result.folder == folder
    assert {r["name"]: (r["status"], r["skipped"]) for r in result.rows} == {"lr-0.001": ("done", True), "lr-0.003": ("done", False)}
    # The resumed run ends where an uninterrupted one does.
    fresh = run_sweep(base, {"lr": [3e-3]}, out=tmp_path / "fresh")
    resumed = next(r for r in result.rows if r["name"] == "lr-0.003")
    assert resumed["validation_loss"] == fresh.rows[0]["validation_loss"]
    assert resumed["test_accuracy"] == fresh.rows[0]["test_accuracy"]
    saved = json.loads((folder / SWEEP_FILE).read_text())
    ranked = [r["validation_loss"] for r in saved["runs"]]
    assert ranked == sorted(ranked) and saved["best"] == saved["runs"][0]["name"] == result.best["name"]


def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    root = write_tiny_data(tmp_path)
    result = run_sweep(tiny_options(root, epochs=1), {"lr": [1e-3, 1e30]}, out=tmp_path / "s")
    assert {r["name"]: r["status"] for r in result.rows} == {"lr-0.001": "done", "lr-1e+30": "failed"}
    failed = next(r for r in result.rows if r["status"] == "failed")
    assert "training loss became nan" in failed["error"] and failed["validation_loss"] is None
    assert result.ranked()[0]["name"] == "lr-0.001"


@pytest.mark.parametrize("stop", ["disk full", "stopped with its checkpoint"])
def test_a_full_disk_stops_the_sweep_rather_than_failing_every_run_after_it(tmp_path, stop):
    from spamtune.errors import DiskFull
    from spamtune.events import TrainingStopped

    root = write_tiny_data(tmp_path)
    started = []

    def full(options, run_dir, on_event):
        started.append(run_dir.name)
        raise DiskFull(run_dir / "delta.safetensors") if stop == "disk full" else TrainingStopped("disk full: x", run_dir, 0)

    with pytest.raises(SpamtuneError, match="disk full: .*the sweep stopped: the same command goes on from there"):
        run_sweep(tiny_options(root, epochs=1), {"lr": [1e-3, 2e-3, 3e-3]}, out=tmp_path / "s", finetune=full)
    assert started == ["lr-0.001"]
    rows = json.loads((tmp_path / "s" / SWEEP_FILE).read_text())["runs"]
    assert {r["status"] for r in rows} == {"pending"}  # none failed: the same command runs them all


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"trainable": ["last-block", "bogus"]}, "unknown trainable preset 'bogus'"),
        ({"lr": [1e-3, 0.0]}, "lr must be a positive number"),
        ({"trainable": ["lora"], "lora_rank": [4, 0]}, "lora rank must be a positive integer"),
        ({"trainable": ["lora"], "lora_rank": [4, 1], "lora_alpha": [8.0, 256.0]}, "lora alpha 256 at rank 1 scales the update"),
        ({"precision": ["fp32", "fp16"]}, "fp16 needs a CUDA device"),
        ({"clip_grad_norm": [1.0, -1.0]}, "clip grad norm"),  # the value's own error, not a clash of folder names
        ({"model": ["tiny", "nosuch"]}, "unknown model 'nosuch'"),
        ({"seed": [1, 2**64]}, "seed must be between"),  # torch.manual_seed's overflow, else, once seed 1 had trained
        ({"trainable": ["last-block", "head"], "lora_rank": [2, 4]}, "--lora-rank applies only with --trainable lora, and no run"),
    ],
)
def test_a_value_that_cannot_work_stops_the_sweep_before_any_run(tmp_path, grid, message):
    """The bad value comes last in the grid: without the check up front the runs before it would
    train first, and the error would surface only when its turn came."""
    root = write_tiny_data(tmp_path)
    started = []
    with pytest.raises(SpamtuneUsageError, match=message):
        run_sweep(tiny_options(root, epochs=1), grid, out=tmp_path / "s", finetune=lambda *a: started.append(a))
    assert started == [] and not (tmp_path / "s").exists()


def test_values_that_mean_the_same_run_here_are_refused_before_any_run(tmp_path):
    """``auto`` is whatever this machine resolves it to: listing both would train one run twice
    under two names."""
    from spamtune.device import resolve_device, resolve_precision

    root = write_tiny_data(tmp_path)
    here = resolve_precision("auto", torch.device("cpu"))
    started = []
    with pytest.raises(SpamtuneUsageError, match=f"--precision auto and {here} are the same here \\(cpu, {here}\\)"):
        run_sweep(tiny_options(root, epochs=1, device="cpu"), {"precision": ["auto", here]}, out=tmp_path / "s", finetune=lambda *a: started.append(a))
    device = resolve_device("auto").type
    with pytest.raises(SpamtuneUsageError, match=f"--device auto and {device} are the same here"):
        run_sweep(tiny_options(root, epochs=1, precision="fp32"), {"device": ["auto", device]}, out=tmp_path / "s", finetune=lambda *a: started.append(a))
    assert started == [] and not (tmp_path / "s").exists()
    other = "fp32" if here != "fp32" else "bf16"  # two values that differ here are two runs
    names = [r["name"] for r in run_sweep(tiny_options(root, epochs=1, device="cpu"), {"precision": ["auto", other]}, out=tmp_path / "t").rows]
    assert names == ["precision-auto", f"precision-{other}"]


FIGURES = {"validation_loss": 0.5, "validation_accuracy": 0.5}  # what a stand-in for training returns


def test_strategies_that_train_alike_in_one_process_are_refused_before_any_run(tmp_path):
    """A sweep's runs each train in one process, where ddp and fsdp both train plainly: listing
    both trained the same run twice under two names."""
    root = write_tiny_data(tmp_path)
    started = []
    with pytest.raises(SpamtuneUsageError, match="--strategy ddp and fsdp are the same in a sweep"):
        run_sweep(tiny_options(root, epochs=1, precision="fp32"), {"strategy": ["ddp", "fsdp"]}, out=tmp_path / "s", finetune=lambda *a: started.append(a))
    assert started == [] and not (tmp_path / "s").exists()
    grid = {"strategy": ["ddp", "fsdp"], "seed": [1, 2]}  # other values still make other runs
    with pytest.raises(SpamtuneUsageError, match="--strategy ddp and fsdp are the same in a sweep"):
        run_sweep(tiny_options(root, epochs=1, precision="fp32"), grid, out=tmp_path / "s", finetune=lambda *a: started.append(a))
    names = [r["name"] for r in run_sweep(tiny_options(root, epochs=1, precision="fp32", strategy="fsdp"), {"seed": [1, 2]}, out=tmp_path / "t",
                                          finetune=lambda *a: FIGURES).rows]  # fmt: skip
    assert names == ["seed-1", "seed-2"]


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"trainable": ["last-block", "last-1-blocks"]}, "--trainable last-block and last-1-blocks are the same run"),
        ({"trainable": ["lora"], "lora_blocks": [None, 2]}, "--lora-blocks none and 2 are the same run"),  # none: all 2 blocks
    ],
)
def test_presets_spelt_two_ways_for_one_run_are_refused_before_any_run(tmp_path, grid, message):
    root = write_tiny_data(tmp_path)  # a 2-block model
    started = []
    with pytest.raises(SpamtuneUsageError, match=message):
        run_sweep(tiny_options(root, epochs=1), grid, out=tmp_path / "s", finetune=lambda *a: started.append(a))
    assert started == [] and not (tmp_path / "s").exists()
    distinct = {"trainable": ["last-block", "last-2-blocks"]} if "lora_blocks" not in grid else {"trainable": ["lora"], "lora_blocks": [None, 1]}
    rows = run_sweep(tiny_options(root, epochs=1), distinct, out=tmp_path / "t", finetune=lambda *a: FIGURES).rows
    assert len(rows) == 2  # presets that train different blocks are two runs


def test_one_model_named_two_ways_is_refused_before_any_run(tmp_path):
    """`--model gpt2,124M` (an alias), `tiny,TINY`, or one config file reached by two paths
    trained the same model twice under two folder names."""
    root = write_tiny_data(tmp_path / "data")
    spelt = [
        (["tiny", "TINY"], "--model tiny and TINY are the same run"),
        (["gpt2", "124M"], "--model gpt2 and 124M are the same run"),
        ([str(root / "tiny.json"), f"{root}/../data/tiny.json"], "--model .* are the same run"),
    ]
    for models, message in spelt:
        with pytest.raises(SpamtuneUsageError, match=message):
            run_sweep(tiny_options(root, epochs=1), {"model": models}, out=tmp_path / "s", finetune=lambda *a: pytest.fail("a run started"))
    assert not (tmp_path / "s").exists()
    rows = run_sweep(tiny_options(root, epochs=1), {"model": ["tiny", str(root / "tiny.json")]}, out=tmp_path / "t", finetune=lambda *a: FIGURES).rows
    assert len(rows) == 2  # two models


def test_the_cli_exits_1_when_no_run_of_a_sweep_finished(tmp_path):
    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path)
    args = ["sweep", "--model", str(root / "tiny.json"), "--weights", "random", "--epochs", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--precision", "fp32", "--lr", "1e30,1e31", "--data-dir", str(root)])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    table = json.loads(open(result.stdout.strip()).read())  # the sweep file is still written and named
    assert [r["status"] for r in table["runs"]] == ["failed", "failed"] and table["best"] is None
    assert result.stderr.strip().splitlines()[-1] == f"Error: no run of the sweep finished: every one of the 2 failed (see {result.stdout.strip()})"
    assert result.stderr.count("WARNING: [") == 2  # each failure, as it happens
    quiet = CliRunner().invoke(app, [*args, "-q", "--precision", "fp32", "--lr", "1e30,1e31", "--data-dir", str(root)])
    assert quiet.exit_code == 1 and quiet.stderr.count("WARNING: [") == 2 and "lr-1e+30 failed: " in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1].startswith("Error: no run of the sweep finished")
    bad = CliRunner().invoke(app, [*args, "--trainable", "last-block,nonsense", "--data-dir", str(root), "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and bad.stdout == "" and not (tmp_path / "bad").exists()
    assert bad.stderr.strip() == "Error: unknown --trainable preset 'nonsense'; choose head, last-block, last-N-blocks (e.g. last-2-blocks), all or lora"


def test_a_sweep_never_writes_among_other_files_nor_removes_a_folder_it_did_not_make(tmp_path):
    root = write_tiny_data(tmp_path / "data")
    base, grid = tiny_options(root, epochs=1), {"lr": [1e-3, 2e-3]}
    crowded = tmp_path / "notes"
    (crowded / "lr-0.001").mkdir(parents=True)
    (crowded / "lr-0.001" / "precious.txt").write_text("mine")
    with pytest.raises(SpamtuneError, match="is not empty and holds no sweep"):
        run_sweep(base, grid, out=crowded)
    assert (crowded / "lr-0.001" / "precious.txt").read_text() == "mine"
    run_sweep(base, {"lr": [1e-3]}, out=tmp_path / "other")  # another sweep's folder...
    with pytest.raises(SpamtuneError, match="holds another sweep"):
        run_sweep(base, grid, out=tmp_path / "other")  # ... is not this one's
    # This sweep's own folder, where somebody has put a folder of theirs under a run's name.
    folder = tmp_path / "sweep"
    run_sweep(base, grid, out=folder, finetune=fake_finetune)
    shutil.rmtree(folder / "lr-0.002")
    (folder / "lr-0.002").mkdir()
    (folder / "lr-0.002" / "precious.txt").write_text("mine")
    with pytest.raises(SpamtuneError, match="is in the way of this sweep's run 'lr-0.002'"):
        run_sweep(base, grid, out=folder, finetune=fake_finetune)
    assert (folder / "lr-0.002" / "precious.txt").read_text() == "mine"


@pytest.mark.parametrize("target", ["empty", "finished run"])
def test_a_link_planted_under_a_run_name_is_in_the_way_and_never_followed(tmp_path, target):
    root = write_tiny_data(tmp_path / "data")
    base, grid = tiny_options(root, epochs=1), {"lr": [1e-3, 2e-3]}
    folder = tmp_path / "sweep"
    run_sweep(base, grid, out=folder, finetune=fake_finetune)
    elsewhere = tmp_path / "elsewhere"
    if target == "empty":
        elsewhere.mkdir()
    else:
        shutil.move(folder / "lr-0.002", elsewhere)
    shutil.rmtree(folder / "lr-0.002", ignore_errors=True)
    (folder / "lr-0.002").symlink_to(elsewhere, target_is_directory=True)
    before = sorted(p.name for p in elsewhere.iterdir())
    with pytest.raises(SpamtuneError, match="is in the way of this sweep's run 'lr-0.002'"):
        run_sweep(base, grid, out=folder, finetune=fake_finetune)
    assert (folder / "lr-0.002").is_symlink() and sorted(p.name for p in elsewhere.iterdir()) == before


def test_a_link_planted_as_the_default_sweep_folder_is_refused_and_never_followed(tmp_path):
    """The folder under <data root>/sweeps is named after the sweep's hash, so it can be planted
    ahead: the sweep wrote its runs and sweep.json wherever the link pointed."""
    root = write_tiny_data(tmp_path / "data")
    base, grid = tiny_options(root, epochs=1), {"lr": [1e-3, 2e-3]}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = root / "sweeps" / f"sweep-{sweep_id(base, grid)}"
    planted.parent.mkdir()
    planted.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SpamtuneError, match="is a symbolic link, not a folder this sweep made"):
        run_sweep(base, grid, finetune=fake_finetune)
    assert planted.is_symlink() and list(elsewhere.iterdir()) == []
    linked_out = tmp_path / "my-sweep"  # named by the user: theirs to point anywhere
    linked_out.symlink_to(elsewhere, target_is_directory=True)
    assert run_sweep(base, grid, out=linked_out, finetune=fake_finetune).best is not None
    assert (elsewhere / SWEEP_FILE).is_file()


def test_an_out_that_is_a_link_to_nothing_is_one_line_saying_so(tmp_path):
    """A --out linked to a folder moved away (or a drive not mounted) failed with mkdir's bare
    "cannot create the sweep folder ...: File exists"."""
    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path / "data")
    link = tmp_path / "my-sweep"
    link.symlink_to(tmp_path / "moved", target_is_directory=True)
    args = ["sweep", "--model", str(root / "tiny.json"), "--weights", "random", "--epochs", "1", "--device", "cpu", "--lr", "1e-3,2e-3"]
    result = CliRunner().invoke(app, [*args, "--data-dir", str(root), "--out", str(link)])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: the sweep folder {link} is a symbolic link to {tmp_path / 'moved'}, which does not exist; give another --out\n"
    assert link.is_symlink() and not (tmp_path / "moved").exists()


@pytest.mark.parametrize("summary", ["[1, 2]", '{"validation_loss": null, "validation_accuracy": 0.5}', '{"validation_loss": 0.1, "validation_accuracy": 0.5, "test_accuracy": "high"}'])
def test_a_finished_run_whose_summary_was_edited_is_one_error_naming_it(tmp_path, summary):
    root = write_tiny_data(tmp_path / "data")
    base, grid = tiny_options(root, epochs=1), {"lr": [1e-3, 2e-3]}
    folder = tmp_path / "sweep"
    run_sweep(base, grid, out=folder, finetune=fake_finetune)
    (folder / "lr-0.001" / "summary.json").write_text(summary)
    with pytest.raises(SpamtuneError, match=r"cannot read run summary .*lr-0.001.summary\.json: it does not hold the run's figures"):
        run_sweep(base, grid, out=folder, finetune=fake_finetune)


def fake_finetune(options, run_dir, on_event=None) -> dict:
    """A finished run folder as training leaves one, without training."""
    run_dir.mkdir(parents=True)
    summary = {"validation_loss": options.lr, "validation_accuracy": 0.5, "test_accuracy": 0.5, "test_loss": 1.0, "wall_time_s": 0.0}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "config.json").write_text("{}")
    (run_dir / "delta.safetensors").write_bytes(b"")
    (run_dir / "base.json").write_text("{}")  # a compact run's classifier: its delta and the base it names
    return summary


def test_a_run_folder_holding_only_its_lock_is_started_and_anything_else_is_not(tmp_path):
    from spamtune.sweep import started_run

    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / ".lock").write_text("")
    (tmp_path / "dotfiles").mkdir()
    (tmp_path / "dotfiles" / ".git").mkdir()
    assert started_run(tmp_path / "locked") and not started_run(tmp_path / "dotfiles")


def test_a_sweep_on_an_unprepared_data_root_says_so_once_before_any_run(tmp_path):
    started = []
    with pytest.raises(SpamtuneError, match="run `spamtune prepare` first"):
        run_sweep(tiny_options(tmp_path, model="tiny", epochs=1), {"lr": [1e-3, 2e-3]}, finetune=lambda *a: started.append(a))
    assert started == [] and not (tmp_path / "sweeps").exists()


def test_a_second_process_running_the_same_sweep_is_refused_while_the_first_holds_it(tmp_path):
    """Run in turn, two processes would each find the other's run locked and mark it failed."""
    import multiprocessing

    from spamtune.sweep import SweepInUse

    root = write_tiny_data(tmp_path)
    base, grid, folder = tiny_options(root, epochs=1), {"lr": [1e-3, 2e-3]}, tmp_path / "s"
    inside, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold_a_sweep, args=(base, grid, folder, inside, release))
    holder.start()
    try:
        assert inside.wait(30)
        with pytest.raises(SweepInUse, match=f"sweep is in use by another process: {folder}"):
            run_sweep(base, grid, out=folder, finetune=fake_finetune)
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0
    saved = json.loads((folder / SWEEP_FILE).read_text())  # the refused one wrote nothing over it
    assert {r["name"]: r["status"] for r in saved["runs"]} == {"lr-0.001": "done", "lr-0.002": "done"} and saved["best"] == "lr-0.001"


def _hold_a_sweep(base, grid, folder, inside, release) -> None:
    """The sweep, its runs waiting until told to go on."""

    def waiting(options, run_dir, on_event=None):
        inside.set()
        release.wait(30)
        return fake_finetune(options, run_dir, on_event)

    run_sweep(base, grid, out=folder, finetune=waiting)


def test_a_folder_whose_sweep_file_is_not_one_is_one_error(tmp_path):
    root = write_tiny_data(tmp_path)
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / SWEEP_FILE).write_text("[1, 2]")
    with pytest.raises(SpamtuneError, match=f"^{folder / SWEEP_FILE} is not a spamtune sweep file"):
        run_sweep(tiny_options(root, epochs=1), {"lr": [1e-3]}, out=folder, finetune=fake_finetune)


def test_a_sweep_given_its_model_file_relative_knows_its_runs_without_its_sweep_file(tmp_path, monkeypatch):
    """A run records its config file's path absolute (read from elsewhere, a relative one named
    no file): the sweep's runs are compared with what they record, so a sweep given the file
    relative still knows its finished runs once sweep.json is gone."""
    root = write_tiny_data(tmp_path)
    monkeypatch.chdir(root)
    base, grid, folder = tiny_options(root, model="tiny.json", epochs=1), {"lr": [1e-3, 2e-3]}, tmp_path / "s"
    run_sweep(base, grid, out=folder)
    assert json.loads((folder / "lr-0.001" / runs.HPARAMS_FILE).read_text())["model"] == str(root / "tiny.json")
    (folder / SWEEP_FILE).unlink()

    def no_training(*args):
        raise AssertionError("a finished run trained again")

    assert [row["skipped"] for row in run_sweep(base, grid, out=folder, finetune=no_training).rows] == [True, True]


@pytest.mark.parametrize("where", ["another directory", "the file edited"])
def test_a_sweep_whose_relative_model_file_now_names_another_model_refuses_its_runs(tmp_path, monkeypatch, where):
    """The sweep's name hashes --model as given: from another directory, where m.json is another
    config, the same command found the same folder and skipped its runs as finished, ranking
    runs of another model as this sweep's."""
    root = write_tiny_data(tmp_path / "data")
    first, second = tmp_path / "a", tmp_path / "b"
    config = json.loads((root / "tiny.json").read_text())
    for folder, width in ((first, config["emb_dim"]), (second, config["emb_dim"] * 2)):
        folder.mkdir()
        (folder / "m.json").write_text(json.dumps({**config, "emb_dim": width}))
    monkeypatch.chdir(first)
    base, grid = tiny_options(root, model="m.json", epochs=1), {"lr": [1e-3, 2e-3]}
    run_sweep(base, grid)
    if where == "another directory":
        monkeypatch.chdir(second)
    else:
        shutil.copy(second / "m.json", first / "m.json")
    started = []
    with pytest.raises(SpamtuneError, match="lr-0.001 was trained on another model .* than this sweep's --model names now"):
        run_sweep(base, grid, finetune=lambda *a: started.append(a) or FIGURES)
    assert started == []
    monkeypatch.chdir(first)
    (first / "m.json").write_text(json.dumps(config))  # the model the runs trained: theirs again
    assert [row["skipped"] for row in run_sweep(base, grid, finetune=lambda *a: started.append(a) or FIGURES).rows] == [True, True]


@pytest.mark.parametrize("damage", ["removed", "cut", "not a sweep"])
def test_a_sweep_whose_sweep_file_is_gone_or_damaged_goes_on_when_its_runs_show_it_is_this_sweep(tmp_path, damage):
    # sweep.json only ranks the runs; losing it used to strand every finished run ("is not
    # empty and holds no sweep"), to be trained again under another --out.
    root = write_tiny_data(tmp_path)
    base, grid, folder = tiny_options(root, epochs=1), {"lr": [1e-3, 2e-3]}, tmp_path / "s"
    first = run_sweep(base, grid, out=folder)
    record = folder / SWEEP_FILE
    if damage == "removed":
        record.unlink()
    elif damage == "cut":
        record.write_text(record.read_text()[:100])
    else:
        record.write_text("[1, 2]")

    def no_training(*args):
        raise AssertionError("a finished run trained again")

    again = run_sweep(base, grid, out=folder, finetune=no_training)
    assert [(r["name"], r["status"], r["skipped"]) for r in again.rows] == [("lr-0.001", "done", True), ("lr-0.002", "done", True)]
    assert again.best["validation_loss"] == first.best["validation_loss"]
    assert json.loads(record.read_text())["best"] == first.best["name"]
    # A run killed as it started (its folder holding nothing but its lock) is no obstacle.
    shutil.rmtree(folder / "lr-0.002")
    (folder / "lr-0.002").mkdir()
    (folder / "lr-0.002" / runs.LOCK_FILE).write_text("")
    record.unlink()
    assert [row["skipped"] for row in run_sweep(base, grid, out=folder).rows] == [True, False]
    # Not when anything in the folder is no run of this sweep as planned: another grid's run,
    # or a run of the same name trained with other options.
    record.unlink()
    with pytest.raises(SpamtuneError, match="is not empty and holds no sweep"):
        run_sweep(base, {"lr": [1e-3]}, out=folder, finetune=no_training)
    with pytest.raises(SpamtuneError, match="is not empty and holds no sweep"):
        run_sweep(replace(base, epochs=2), grid, out=folder, finetune=no_training)
    assert not record.exists()


def test_lora_values_make_no_second_run_of_a_preset_that_trains_no_lora(tmp_path):
    root = write_tiny_data(tmp_path)
    grid = {"trainable": ["lora", "last-block"], "lora_rank": [2, 4]}
    result = run_sweep(tiny_options(root, epochs=1), grid, out=tmp_path / "s", finetune=fake_finetune)
    assert sorted(r["name"] for r in result.rows) == ["trainable-last-block", "trainable-lora_lora_rank-2", "trainable-lora_lora_rank-4"]
    assert json.loads((tmp_path / "s" / SWEEP_FILE).read_text())["grid"] == grid


def test_a_sweep_stopped_before_its_run_had_a_checkpoint_says_so_and_keeps_the_row_pending(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "prepare_base", ctrl_c)
    args = ["sweep", "--model", str(root / "tiny.json"), "--weights", "random", "--epochs", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--lr", "1e-3,2e-3", "--data-dir", str(root), "--out", str(tmp_path / "s")])
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == "interrupted; finished runs are kept: run the same command again to go on"
    saved = json.loads((tmp_path / "s" / SWEEP_FILE).read_text())
    assert [r["status"] for r in saved["runs"]] == ["pending", "pending"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".lock", SWEEP_FILE]  # no half-made run folder


def test_runs_that_train_no_lora_are_one_run_whatever_the_lora_values():
    """``--trainable lora,last-block --lora-rank 4,16`` is three runs, in the order listed."""
    from spamtune.sweep import _distinct_runs

    base = train.FinetuneOptions(model="tiny", weights="random")
    combos = combinations({"trainable": ["lora", "last-block"], "lora_rank": [4, 16], "seed": [1, 2]})
    assert _distinct_runs(base, combos) == [
        {"trainable": "lora", "lora_rank": 4, "seed": 1},
        {"trainable": "lora", "lora_rank": 4, "seed": 2},
        {"trainable": "lora", "lora_rank": 16, "seed": 1},
        {"trainable": "lora", "lora_rank": 16, "seed": 2},
        {"trainable": "last-block", "seed": 1},
        {"trainable": "last-block", "seed": 2},
    ]


def test_values_too_long_for_a_folder_name_give_a_shorter_name_of_their_own(tmp_path):
    deep = "/".join(["configs"] * 40)  # two config files far down a tree: 330-character names
    first, second = run_name({"model": f"{deep}/tiny.json"}), run_name({"model": f"{deep}/tiny-2.json"})
    assert len(first) <= 255 and len(second) <= 255 and first != second
    assert first.startswith("model-configs-configs") and first == run_name({"model": f"{deep}/tiny.json"})
    (tmp_path / first).mkdir()  # a folder can be named so
    assert run_name({"lr": 1e-3, "trainable": "last-block"}) == "lr-0.001_trainable-last-block"  # short names as before


def test_a_sweep_run_again_after_the_data_was_prepared_anew_refuses_its_old_runs(tmp_path):
    from helpers import tiny_split

    from spamtune.data import write_split

    root = write_tiny_data(tmp_path / "root")
    base, grid = tiny_options(root, epochs=1), {"lr": [1e-3, 3e-3]}
    first = run_sweep(base, grid)
    write_split(root / "train.csv", tiny_split(40, 7))  # `spamtune prepare` again: other splits
    started = []
    with pytest.raises(SpamtuneError, match=f"{first.rows[0]['run']} was trained on other data than is now prepared in"):
        run_sweep(base, grid, finetune=lambda *a: started.append(a))
    assert started == [] and json.loads((first.folder / SWEEP_FILE).read_text())["best"] == first.best["name"]


def test_sigterm_stops_a_sweep_as_ctrl_c_does_and_the_same_command_goes_on(tmp_path):
    """A scheduler's time limit (SIGTERM) mid-sweep: sweep.json says what finished and what is
    interrupted, exit 143, and the interrupted run resumes from its checkpoint next time."""
    import sys

    root = write_tiny_data(tmp_path / "data")
    out = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "spamtune", "sweep", "--model", str(root / "tiny.json"), "--weights", "random",
        "--device", "cpu", "--precision", "fp32", "--epochs", "500", "--lr", "1e-3,2e-3", "--data-dir", str(root),
        "--out", str(out),
    ]  # fmt: skip
    stopped = sigterm_once_ready(command, checkpointed_after_an_evaluation(out / "lr-0.001"))
    assert stopped.returncode == 143 and "Traceback" not in stopped.stderr, stopped.stderr
    assert "finished runs are kept: run the same command again to go on" in stopped.stderr
    rows = {row["name"]: row["status"] for row in json.loads((out / SWEEP_FILE).read_text())["runs"]}
    assert rows == {"lr-0.001": "interrupted", "lr-0.002": "pending"}


def test_a_run_that_trained_and_lost_its_resume_state_is_refused_not_removed(tmp_path):
    """The sweep took such a run for one stopped before its first checkpoint: it removed it,
    metrics and weights, and trained it again from step 0."""
    from spamtune import runs

    root = write_tiny_data(tmp_path)
    base, grid = tiny_options(root, epochs=2, eval_every=3), {"lr": [1e-3, 3e-3]}

    def stop_at_step_8(event):
        if isinstance(event, train.StepDone) and event.step == 8:
            raise KeyboardInterrupt

    with pytest.raises(train.TrainingInterrupted):
        run_sweep(base, grid, on_event=stop_at_step_8)
    run_dir = root / "sweeps" / f"sweep-{sweep_id(base, grid)}" / "lr-0.001"
    runs.resume_file(run_dir).unlink()
    metrics = (run_dir / runs.METRICS_FILE).read_bytes()
    started = []
    with pytest.raises(SpamtuneError, match=f"^{run_dir} has trained but its resume state {runs.resume_file(run_dir)} is missing, .* remove {run_dir} to train it from the start$"):
        run_sweep(base, grid, finetune=lambda *a: started.append(a))
    assert started == [] and (run_dir / runs.METRICS_FILE).read_bytes() == metrics


@pytest.mark.parametrize("lost", ["delta.safetensors", "config.json"])
def test_a_finished_run_that_lost_its_weights_or_config_is_refused_not_removed(tmp_path, lost):
    """The sweep took such a run for one stopped before its first checkpoint: it removed it,
    summary and metrics, and trained it again from step 0, without a word."""
    from spamtune import runs

    root = write_tiny_data(tmp_path)
    base, grid = tiny_options(root, epochs=1), {"lr": [1e-3, 3e-3]}
    run_sweep(base, grid, out=tmp_path / "s")
    run_dir = tmp_path / "s" / "lr-0.001"
    (run_dir / lost).unlink()
    summary = (run_dir / runs.SUMMARY_FILE).read_bytes()
    started = []
    with pytest.raises(SpamtuneError, match=f"^{run_dir} finished, but its weights or config.json are missing, .* remove {run_dir} to train it again$"):
        run_sweep(base, grid, out=tmp_path / "s", finetune=lambda *a: started.append(a) or FIGURES)
    assert started == [] and (run_dir / runs.SUMMARY_FILE).read_bytes() == summary


def test_a_prepare_while_the_sweep_runs_stops_it_before_its_runs_train_on_other_data(tmp_path):
    """Runs trained on two preparations were ranked together as one sweep's."""
    from helpers import tiny_split

    from spamtune.data import write_split
    from spamtune.sweep import SweepRunFinished

    root = write_tiny_data(tmp_path / "root")
    base, grid = tiny_options(root, epochs=1), {"lr": [1e-3, 2e-3, 3e-3]}
    started = []

    def prepare_after_the_first(event):
        if isinstance(event, SweepRunFinished) and event.index == 1:
            write_split(root / "train.csv", tiny_split(40, 7))  # `spamtune prepare` from another shell

    with pytest.raises(SpamtuneError, match=r"^the prepared splits in .* changed while this sweep ran, so .*lr-0\.002 would train on other data than the runs before it; prepare them as before and run the same command to go on, or give the sweep another --out$"):
        run_sweep(base, grid, on_event=prepare_after_the_first, finetune=lambda *a: started.append(a) or fake_finetune(*a))
    assert len(started) == 1


def test_a_prepare_as_a_sweep_run_starts_is_caught_once_the_run_ends(tmp_path):
    from helpers import tiny_split

    from spamtune.data import write_split

    root = write_tiny_data(tmp_path / "root")
    base, grid = tiny_options(root, epochs=1), {"lr": [1e-3, 2e-3, 3e-3]}
    started = []

    def prepared_anew_as_the_second_starts(options, run_dir, on_event=None):
        started.append(run_dir)
        if len(started) == 2:  # after the sweep looked, before the run read the splits
            write_split(root / "train.csv", tiny_split(40, 7))
        return train.finetune(options, run_dir, on_event)

    with pytest.raises(SpamtuneError, match=r"so .*lr-0\.002 trained on other data than the runs before it; remove .*lr-0\.002, prepare"):
        run_sweep(base, grid, finetune=prepared_anew_as_the_second_starts)
    assert len(started) == 2


def test_the_progress_shows_an_escape_sequence_in_a_path_given_rather_than_sending_it_to_the_terminal(tmp_path):
    """The run folders under --out and the model's config file are the user's paths: the run
    started, the run folder, the best run, the interrupted run and the table's title were printed as they were, so
    an escape sequence in one (or rich markup, which the console never reads) reached the terminal."""
    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path / "data")
    planted = tmp_path / "m\x1b]0;owned\x07[red]\x9b31m"
    planted.mkdir()
    shutil.copy(root / "tiny.json", planted / "cfg\x1b[2J.json")
    args = ["sweep", "--model", str(planted / "cfg\x1b[2J.json"), "--weights", "random", "--epochs", "1", "--device", "cpu"]
    out = planted / "s\x1b[1mw"
    result = CliRunner().invoke(app, [*args, "--precision", "fp32", "--lr", "1e-3,2e-3", "--data-dir", str(root), "--out", str(out)])
    assert result.exit_code == 0 and "Traceback" not in result.stderr, result.stderr
    assert not any(c in result.stderr for c in "\x1b\x07\x9b")
    shown = str(out).encode("unicode_escape").decode("ascii")  # as one_line writes it
    assert f"run folder: {shown}/lr-0.001" in result.stderr and f"best: {shown}/lr-0." in result.stderr
    assert "sweep s\\x1b[1mw: 2 runs" in result.stderr  # the table's title
    assert result.stdout == f"{shown}/{SWEEP_FILE}\n"
    assert "fine-tuning cfg\\x1b[2J on cpu" in result.stderr and "[red]" in result.stderr


def test_a_grid_of_more_combinations_than_a_sweep_takes_is_one_usage_error_before_any_work(tmp_path):
    """A list pasted by mistake: every combination was made, checked and named first (minutes
    and gigabytes for a million), then written into sweep.json after every run."""
    from typer.testing import CliRunner

    from spamtune.cli import app
    from spamtune.sweep import MAX_COMBINATIONS

    root = write_tiny_data(tmp_path / "data")
    seeds, rates = ",".join(map(str, range(MAX_COMBINATIONS // 100 + 1))), ",".join(f"{n}e-4" for n in range(1, 101))

    def never(*args):
        raise AssertionError("a run started")

    with pytest.raises(SpamtuneUsageError, match=f"lists {MAX_COMBINATIONS + 100:,} combinations .* at most {MAX_COMBINATIONS:,}"):
        run_sweep(tiny_options(root), parse_grid(train.FinetuneOptions, {"seed": seeds, "lr": rates}), tmp_path / "lib", finetune=never)
    args = ["sweep", "--model", str(root / "tiny.json"), "--weights", "random", "--seed", seeds, "--lr", rates, "--out", str(tmp_path / "cli")]
    result = CliRunner().invoke(app, [*args, "--data-dir", str(root)])
    assert result.exit_code == 2 and result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"Error: this sweep lists {MAX_COMBINATIONS + 100:,} combinations (100 --lr x 101 --seed)")
    assert not (tmp_path / "lib").exists() and not (tmp_path / "cli").exists()


def test_a_sweep_or_run_under_a_path_that_is_no_utf8_is_refused_before_anything_is_made(tmp_path):
    """safetensors opens files by a UTF-8 path, and sweep.json and a run's JSON files record
    where they are: such a sweep failed with "unexpected UnicodeEncodeError" after making its
    folder, and a run trained to its end, then failed as it saved."""
    import os

    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path / "data")
    base, grid = tiny_options(root, epochs=1), {"lr": [1e-3, 2e-3]}
    out = tmp_path / os.fsdecode(b"sweep-\xff")
    with pytest.raises(SpamtuneError, match=r"the sweep folder .* is not a UTF-8 path"):
        run_sweep(base, grid, out=out, finetune=fake_finetune)
    odd_root = shutil.copytree(root, tmp_path / os.fsdecode(b"data-\xe9"))
    with pytest.raises(SpamtuneError, match=r"the data root .* is not a UTF-8 path"):
        run_sweep(replace(base, data_dir=str(odd_root)), grid, out=tmp_path / "sweep", finetune=fake_finetune)
    with pytest.raises(SpamtuneError, match=r"the run folder .* is not a UTF-8 path"):
        train.finetune(base, tmp_path / os.fsdecode(b"run-\xff"))
    with pytest.raises(SpamtuneError, match=r"the data root .* is not a UTF-8 path"):
        train.finetune(replace(base, data_dir=str(odd_root)), tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data", odd_root.name])
    args = ["sweep", "--model", str(root / "tiny.json"), "--weights", "random", "--lr", "1e-3,2e-3", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--data-dir", str(root)])
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr == f"Error: the sweep folder {tmp_path}/sweep-\\udcff is not a UTF-8 path (it holds bytes that are no UTF-8), which a run's files cannot be written under; give another\n"


def test_a_relative_out_is_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    """sweep.json and each run's summary.json named the runs relative to the directory the
    sweep ran in (`--out my-sweep`): read from anywhere else they pointed nowhere."""
    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--model", str(root / "tiny.json"), "--weights", "random", "--epochs", "1", "--device", "cpu", "--precision", "fp32"]
    result = CliRunner().invoke(app, [*args, "--lr", "1e-3,2e-3", "--out", "my-sweep", "--data-dir", str(root)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'my-sweep' / SWEEP_FILE}\n"
    table = json.loads((tmp_path / "my-sweep" / SWEEP_FILE).read_text())
    assert sorted(row["run"] for row in table["runs"]) == [str(tmp_path / "my-sweep" / name) for name in ("lr-0.001", "lr-0.002")]
    assert json.loads((tmp_path / "my-sweep" / "lr-0.001" / runs.SUMMARY_FILE).read_text())["run"] == str(tmp_path / "my-sweep" / "lr-0.001")
