"""``--strategy fsdp`` (PyTorch's FSDP2 on gloo, 2 CPU processes): the trained weights, their
gradients and AdamW's moments are sharded, and the run is still the single process's: same
weights and metrics for the same global batch, one ordinary run folder that ``predict``
loads, and a resume state that one process or two ranks continue."""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_options, write_tiny_data
from safetensors import safe_open
from test_distributed import RESULT_KEYS, _interrupted_rank, metrics_close, run_ranks, weights_close
from torch.distributed.tensor import DTensor

from spamtune import distributed, events, runs, train
from spamtune.cli import app
from spamtune.distributed import World
from spamtune.errors import OptionError

# The global batch of 8 is 4 per rank. "all": every parameter sharded, the case FSDP is for,
# with clipping (the norm is taken over every rank's shards); batch 3 with accumulation over
# 2 batches: uneven shares, a last batch of 1 where a rank runs a batch weighted 0, and
# gradients reduced after each micro-batch; a run whose best weights are not its last (the test
# split is scored with the best, scattered from rank 0; seed 11 peaks after its first epoch).
CASES = {
    "last-block, batch 8": {"batch_size": 8},
    "all, batch 8, clipped": {"batch_size": 8, "trainable": "all", "epochs": 1, "clip_grad_norm": 0.5},
    "all, batch 8, best before the end": {"batch_size": 8, "trainable": "all", "epochs": 3, "lr": 1e-2, "seed": 11},
    "all, batch 3, accumulation 2": {"batch_size": 3, "grad_accum": 2, "trainable": "all", "epochs": 1},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def single_runs(root) -> dict[str, Path]:
    return {name: Path(train.finetune(tiny_options(root, **o), root / "runs" / f"one-{i}")["run"]) for i, (name, o) in enumerate(CASES.items())}


def _local_and_full(tensor) -> tuple[list[int], list[int]]:
    """(shape of what this rank holds, shape of the whole tensor)."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return list(local.shape), list(tensor.shape)


def _fsdp_rank(rank: int, root: Path, out: Path, overrides: dict, report: Path) -> None:
    """Train with --strategy fsdp; write what this rank held at the last checkpoint: per trained
    parameter the shapes of its weight, gradient and AdamW moment, and of the frozen ones."""
    distributed.init_from_env("cpu")
    real_state = train.training_state
    held = {}

    def spy(model, optimizer, keep=True):
        held.clear()
        for name, p in model.named_parameters():
            if p.requires_grad and optimizer.state.get(p):
                held[name] = [_local_and_full(t) for t in (p, p.grad, optimizer.state[p]["exp_avg"])]
            elif not p.requires_grad:
                held[name] = [_local_and_full(p)]
        return real_state(model, optimizer, keep)

    train.training_state = spy
    started = []  # what the run said it was: rank 0 reports, the others stay silent
    on_event = lambda e: started.append(e.parallel) if isinstance(e, events.TrainingStarted) else None  # noqa: E731
    train.finetune(tiny_options(root, strategy="fsdp", **overrides), out, on_event=on_event)
    report.with_name(f"{report.name}.{rank}").write_text(json.dumps({"held": held, "started": started}))


@pytest.mark.parametrize("case", list(CASES))
def test_two_fsdp_ranks_train_as_one_process_with_the_same_global_batch(root, single_runs, tmp_path, case):
    out = tmp_path / "two"
    assert run_ranks(_fsdp_rank, root, out, CASES[case], tmp_path / "held") == [0, 0]
    one = single_runs[case]
    assert weights_close(out, one) and metrics_close(out, one)
    ours, theirs = (json.loads((d / runs.SUMMARY_FILE).read_text()) for d in (out, one))
    assert all(ours[k] == pytest.approx(theirs[k], abs=1e-5) for k in RESULT_KEYS)
    assert ours["best_step"] == theirs["best_step"]
    assert ("best before the end" in case) == (theirs["best_step"] < theirs["steps"])
    assert ours["calibration"]["temperature"] == pytest.approx(theirs["calibration"]["temperature"], rel=1e-4)
    # Rank 0 alone wrote: one run's files, and its weights are the plain classifier's.
    assert sorted(p.name for p in out.iterdir() if p.name != runs.LOCK_FILE) == sorted(runs.finished_run_files())
    assert json.loads((out / runs.HPARAMS_FILE).read_text())["strategy"] == "fsdp"
    # Each rank held half the rows of every trained weight, gradient and moment; the frozen ones whole.
    reports = [json.loads((tmp_path / f"held.{r}").read_text()) for r in (0, 1)]
    assert [r["started"] for r in reports] == [["2 ranks, fsdp"], []]
    held = [r["held"] for r in reports]
    trained = [name for name, tensors in held[0].items() if len(tensors) == 3]
    assert "out_head.weight" in trained and ("tok_emb.weight" in trained) == (CASES[case].get("trainable") == "all")
    for name in trained:
        for kind in range(3):
            (local0, full), (local1, _) = held[0][name][kind], held[1][name][kind]
            assert local0[0] + local1[0] == full[0] and max(local0[0], local1[0]) == (full[0] + 1) // 2, (name, kind)
            assert local0[1:] == local1[1:] == full[1:]
    frozen = [name for name, tensors in held[0].items() if len(tensors) == 1]
    assert all(held[1][name][0][0] == held[1][name][0][1] for name in frozen)
    assert bool(frozen) == (CASES[case].get("trainable") != "all")


def test_the_fsdp_run_folder_serves_predict(single_runs, tmp_path):
    """An fsdp run is an ordinary run: predict loads it and answers as for the single process's."""
    one = single_runs["all, batch 8, clipped"]
    out = tmp_path / "two"
    assert run_ranks(_fsdp_rank, one.parents[1], out, CASES["all, batch 8, clipped"], tmp_path / "held") == [0, 0]
    texts = tmp_path / "texts.txt"
    texts.write_text("WINNER!! claim your free prize now\nsee you at lunch tomorrow\n")
    answers = []
    for run_dir in (out, one):
        target = tmp_path / f"{run_dir.name}.jsonl"
        argv = ["predict", "--input", str(texts), "--run", str(run_dir), "--device", "cpu", "--format", "jsonl", "--out", str(target)]
        assert app(argv, standalone_mode=False) in (0, None)
        answers.append([json.loads(line) for line in target.read_text().splitlines()])
    assert len(answers[0]) == 2
    for ours, theirs in zip(*answers):
        assert ours["label"] == theirs["label"] and ours["p_spam"] == pytest.approx(theirs["p_spam"], abs=1e-4)


def _resume_rank(rank: int, out: Path) -> None:
    distributed.init_from_env("cpu")
    train.resume_finetune(out)


@pytest.fixture(scope="module")
def single_all_two_epochs(root) -> Path:
    return Path(train.finetune(tiny_options(root, batch_size=8, trainable="all", epochs=2), root / "runs" / "one-all-2")["run"])


@pytest.mark.parametrize("resumed_by", ["one process", "two fsdp ranks"])
def test_a_two_rank_fsdp_checkpoint_resumes(root, single_all_two_epochs, tmp_path, resumed_by):
    """The resume state holds whole tensors (weights and AdamW's moments): one process, or the
    same number of ranks, continues where the sharded run stopped and ends as if never stopped."""
    out = tmp_path / "two"
    assert run_ranks(_interrupted_rank, root, out, 8, "interrupt", {"trainable": "all", "strategy": "fsdp"}) == [130, 130]
    assert not runs.is_finished(out)
    assert runs.weights_file(out) is not None  # rank 0 wrote the best weights so far on Ctrl-C
    if resumed_by == "one process":
        resumed = []
        train.resume_finetune(out, on_event=lambda e: resumed.append(e.step) if isinstance(e, events.StepDone) else None)
        assert resumed == [6, 7, 8, 9, 10]  # from the checkpoint at the end of epoch 1
    else:
        assert run_ranks(_resume_rank, out) == [0, 0]
    assert weights_close(out, single_all_two_epochs) and metrics_close(out, single_all_two_epochs)


def test_a_single_process_checkpoint_resumes_as_two_fsdp_ranks(root, single_all_two_epochs, tmp_path, monkeypatch):
    """The other way round: started plainly (ddp), continued sharded with --strategy fsdp."""
    from helpers import ctrl_c_at_step

    out = tmp_path / "one"
    ctrl_c_at_step(monkeypatch, 8)
    with pytest.raises(events.TrainingInterrupted):
        train.finetune(tiny_options(root, batch_size=8, trainable="all", epochs=2), out)
    monkeypatch.undo()

    def resume_sharded(rank: int, out: Path) -> None:
        distributed.init_from_env("cpu")
        train.resume_finetune(out, {"strategy": "fsdp"})

    assert run_ranks(resume_sharded, out) == [0, 0]
    assert weights_close(out, single_all_two_epochs) and metrics_close(out, single_all_two_epochs)


def test_fsdp_in_one_process_trains_plainly(root, single_runs, tmp_path):
    """A world of one has nothing to shard: --strategy fsdp trains exactly as ddp does."""
    summary = train.finetune(tiny_options(root, strategy="fsdp", batch_size=8), tmp_path / "one")
    one = single_runs["last-block, batch 8"]
    assert weights_close(Path(summary["run"]), one, atol=0)
    theirs = json.loads((one / runs.SUMMARY_FILE).read_text())
    assert all(summary[k] == theirs[k] for k in RESULT_KEYS)


def test_fsdp_refuses_what_it_cannot_shard(root, tmp_path, capsys):
    code = app(
        ["finetune", "--model", str(root / "tiny.json"), "--weights", "random", "--trainable", "lora", "--strategy", "fsdp", "--data-dir", str(root)],
        standalone_mode=False,
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: --strategy fsdp shards") and "use --strategy ddp with --trainable lora" in err and "\n" not in err
    assert app(["finetune", "--strategy", "zero3", "--data-dir", str(root)], standalone_mode=False) == 2
    # fp16's gradient scaler sees one shard per rank: refused where FSDP runs (several ranks).
    fp16_on_gpu = SimpleNamespace(device=torch.device("cuda"), name="fp16")
    with pytest.raises(OptionError, match="fsdp trains in fp32 or bf16"):
        train.check_strategy("fsdp", fp16_on_gpu, World(0, 2))
    train.check_strategy("fsdp", fp16_on_gpu, World())  # one process: plain training, fp16 as usual
    train.check_strategy("ddp", fp16_on_gpu, World(0, 2))


def test_devices_refuses_bad_options_once_before_starting_any_rank(root, monkeypatch, capsys):
    """Checked in the launching process: one line and exit 2, not one line per rank and the launcher's."""
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: launched.append(argv))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    tiny = ["--model", str(root / "tiny.json"), "--weights", "random", "--data-dir", str(root), "--devices", "2"]
    refused = {
        "lora": (["--strategy", "fsdp", "--trainable", "lora"], "Error: --strategy fsdp shards the training state of whole weights"),
        "fp16 off CUDA": (["--strategy", "fsdp", "--device", "cpu", "--precision", "fp16"], "Error: --precision fp16 needs a CUDA device"),
        "a bad value": (["--epochs", "0"], "Error: --epochs must be at least 1 (got 0)"),
    }
    for name, (flags, first_words) in refused.items():
        assert app(["finetune", *tiny, *flags], standalone_mode=False) == 2, name
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(first_words), (name, lines)
    assert launched == []
    # Good options reach the launcher.
    assert app(["finetune", *tiny, "--strategy", "fsdp", "--device", "cpu"], standalone_mode=False) in (0, None)
    assert len(launched) == 1


def test_devices_refuses_a_taken_run_folder_a_missing_device_or_unprepared_data_before_starting_any_rank(
    root, tmp_path, monkeypatch, capsys
):
    """Each of these started the ranks, which then refused it one line each, followed by the
    launcher's "rank 0 of 2 exited": the run folder, --device and the data root are known here."""
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: launched.append(argv))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    tiny = ["--model", str(root / "tiny.json"), "--weights", "random", "--devices", "2"]
    refused = {
        "taken": ([*tiny, "--data-dir", str(root), "--run", str(taken)], f"Error: {taken} already exists and is not empty; choose another --run"),
        "cuda": ([*tiny, "--data-dir", str(root), "--device", "cuda"], "Error: --device cuda: CUDA is not available"),
        "unprepared": ([*tiny, "--data-dir", str(tmp_path / "empty")], "Error: label map (run `spamtune prepare` first) not found"),
    }
    for name, (args, first_words) in refused.items():
        assert app(["finetune", *args], standalone_mode=False) == 1, name
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(first_words), (name, lines)
    assert launched == [] and (taken / "notes.txt").read_text() == "mine"
    assert app(["finetune", *tiny, "--data-dir", str(root), "--run", str(tmp_path / "new")], standalone_mode=False) in (0, None)
    assert len(launched) == 1 and not (tmp_path / "new").exists()  # the ranks' rank 0 creates it


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")  # CUDA faked: the scaler notices
def test_the_launcher_checks_fsdp_limits_it_can_know_without_a_gpu(root, monkeypatch):
    """fp16 and non-CUDA/CPU devices are refused before launching; what "auto" or bf16 becomes on
    a GPU depends on the GPU's properties, which the launcher leaves to the ranks (CUDA unstarted)."""
    options = tiny_options(root, strategy="fsdp")
    for device, precision, refusal in (("cuda", "fp16", "fsdp trains in fp32 or bf16"), ("mps", "fp32", "fsdp runs on CUDA GPUs or CPUs, not mps")):
        monkeypatch.setattr(train, "resolve_device", lambda name, device=device: torch.device(device))
        with pytest.raises(OptionError, match=refusal):
            train.check_before_launch(replace(options, device=device, precision=precision), 2)
    monkeypatch.setattr(train, "resolve_device", lambda name: torch.device("cuda"))
    for precision in ("auto", "bf16", "fp32"):
        train.check_before_launch(replace(options, device="cuda", precision=precision), 2)
    train.check_before_launch(replace(options, device="cuda", precision="fp16", strategy="ddp"), 2)


def test_a_dead_fsdp_rank_stops_the_other_with_the_checkpoint_intact(root, tmp_path, monkeypatch, capfd):
    """A peer lost inside FSDP's own gathers and reductions stops the survivor with one line."""
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "20")
    out = tmp_path / "two"
    codes = run_ranks(_interrupted_rank, root, out, 8, "kill", {"trainable": "all", "strategy": "fsdp"}, timeout=45)
    assert codes == [1, -signal.SIGKILL]
    assert "rank 0: Error: lost contact with the other ranks (" in capfd.readouterr().err
    with safe_open(str(runs.resume_file(out)), "pt") as f:
        assert json.loads(f.metadata()["loop"])["step"] == 5
