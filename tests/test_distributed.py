"""Several ranks (gloo on CPU, 2 processes) behave as one process with the same global batch:
same weights and metrics, one writer, resumable with another number of ranks, no hang when a
rank dies, and sharded prediction writes the single-process output.

Ranks are forked from the test process (seconds, not the import time of fresh interpreters)
and join through torchrun's environment variables on a free 127.0.0.1 port; every join has a
timeout, so a broken test fails instead of hanging."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from helpers import run_weights, tiny_options, write_rigged_run, write_tiny_data

from spamtune import distributed, events, runs, train
from spamtune.cli import app
from spamtune.cli import predict as predict_cli
from spamtune.errors import SpamtuneError, SpamtuneUsageError
from spamtune.evaluate import evaluate_run

REPO = Path(__file__).resolve().parents[1]
JOIN_TIMEOUT_S = 60
RESULT_KEYS = ("test_accuracy", "test_loss", "validation_accuracy", "validation_loss", "train_accuracy", "train_loss")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, size: int, port: int, fn, args) -> None:
    """One forked rank: torchrun's environment, ``fn(rank, *args)``, exit status as the CLI's."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    # A forked child must not enter the OpenMP pool the parent already started: libgomp is not
    # fork-safe and the child's first parallel region can hang. One thread per rank keeps it out
    # (torchrun starts fresh processes, so this concerns the tests' fork only).
    torch.set_num_threads(1)
    code = 0
    try:
        fn(rank, *args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except SpamtuneError as exc:
        print(f"rank {rank}: Error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except BaseException:
        traceback.print_exc()
        code = 99
    finally:
        distributed.shutdown()
        os._exit(code)


def run_ranks(fn, *args, size: int = 2, timeout: float = JOIN_TIMEOUT_S, exit_times: list | None = None) -> list[int | None]:
    """Fork ``size`` ranks running ``fn(rank, *args)``; their exit codes (None: still running
    at the timeout, or 2 s after a rank failed, then killed). ``exit_times`` receives when each was found ended (monotonic)."""
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(rank, size, port, fn, args)) for rank in range(size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        codes.append(p.exitcode)
        if exit_times is not None:
            exit_times.append(time.monotonic())
        if p.exitcode not in (0, None):  # a failed rank: the others get 2 s to follow, as torchrun gives them
            deadline = min(deadline, time.monotonic() + 2)
        if p.exitcode is None:
            p.kill()
            p.join()
    return codes


def without_key_bias(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The key bias adds the same score to every position, which the softmax cancels: its true
    gradient is 0, AdamW turns the rounding noise in it into steps of size lr, so it differs
    between any two orders of summation. It is left out of the comparison (it cannot change
    an output); the query and value biases stay in."""
    if not name.endswith("att.qkv.bias"):
        return tensor
    d = tensor.shape[0] // 3
    return torch.cat([tensor[:d], tensor[2 * d :]])


def weights_close(a: Path, b: Path, atol: float = 1e-5) -> bool:
    x, y = run_weights(a), run_weights(b)
    return x.keys() == y.keys() and all(
        torch.allclose(without_key_bias(k, x[k]), without_key_bias(k, y[k]), atol=atol, rtol=0) for k in x
    )


def metrics_close(a: Path, b: Path) -> bool:
    ra, rb = runs.read_metrics(a), runs.read_metrics(b)
    if [r["step"] for r in ra] != [r["step"] for r in rb] or not ra:
        return False
    return all(r1[k] == pytest.approx(r2[k], abs=1e-5) for r1, r2 in zip(ra, rb) for k in r1 if k != "elapsed_s")


def _finetune_rank(rank: int, root: Path, out: Path, overrides: dict, events_file: Path) -> None:
    distributed.init_from_env("cpu")
    seen = []
    try:
        train.finetune(tiny_options(root, **overrides), out, on_event=seen.append)
    finally:
        events_file.with_name(f"{events_file.name}.{rank}").write_text(str(len(seen)))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


# Uneven shares too: batches of 3 split 1 + 2, and 40 % 3 leaves a last batch of 1, where one
# rank has nothing and runs a batch weighted 0; with accumulation over 2 batches.
# And a run whose best weights are not its last (seed 11 peaks after its first epoch): every rank
# must score the test split with them.
CASES = {
    "last-block, batch 8": {"batch_size": 8},
    "all blocks, batch 3, accumulation 2": {"batch_size": 3, "grad_accum": 2, "trainable": "all", "epochs": 1},
    "all blocks, batch 8, best before the end": {"batch_size": 8, "trainable": "all", "epochs": 3, "lr": 1e-2, "seed": 11},
}


@pytest.fixture(scope="module")
def single_runs(root) -> dict[str, Path]:
    return {name: Path(train.finetune(tiny_options(root, **o), root / "runs" / f"one-{i}")["run"]) for i, (name, o) in enumerate(CASES.items())}


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_train_as_one_process_with_the_same_global_batch(root, single_runs, tmp_path, case):
    out = tmp_path / "two"
    codes = run_ranks(_finetune_rank, root, out, CASES[case], tmp_path / "events")
    assert codes == [0, 0]
    one = single_runs[case]
    assert weights_close(out, one)
    assert metrics_close(out, one)
    ours, theirs = (json.loads((d / runs.SUMMARY_FILE).read_text()) for d in (out, one))
    assert all(ours[k] == pytest.approx(theirs[k], abs=1e-5) for k in RESULT_KEYS)
    assert ours["best_step"] == theirs["best_step"] and ours["examples_seen"] == theirs["examples_seen"]
    assert ("best before the end" in case) == (theirs["best_step"] < theirs["steps"])
    # Only rank 0 writes and reports: the folder holds one run's files, rank 1 saw no event.
    assert sorted(p.name for p in out.iterdir() if p.name != runs.LOCK_FILE) == sorted(runs.finished_run_files())
    assert json.loads((out / runs.HPARAMS_FILE).read_text())["resolved"]["world_size"] == 2
    assert int((tmp_path / "events.0").read_text()) > 0 and int((tmp_path / "events.1").read_text()) == 0


def _interrupted_rank(rank: int, root: Path, out: Path, stop_at: int, how: str, overrides: dict | None = None) -> None:
    """Train with 2 ranks (batch 8, 2 epochs, ``overrides``); at step ``stop_at`` both raise
    Ctrl-C ("interrupt") or rank 1 dies ("kill")."""
    distributed.init_from_env("cpu")
    real_step = train.optimizer_step
    steps = [0]

    def step(*args, **kwargs):
        steps[0] += 1
        if steps[0] == stop_at:
            if how == "interrupt":
                raise KeyboardInterrupt
            if rank == 1 and how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if rank == 1 and how == "hang":
                time.sleep(JOIN_TIMEOUT_S)
        return real_step(*args, **kwargs)

    train.optimizer_step = step
    try:
        train.finetune(tiny_options(root, **{"batch_size": 8, "epochs": 2, **(overrides or {})}), out)
    except events.TrainingInterrupted:
        raise SystemExit(130) from None


def test_a_two_rank_checkpoint_resumes_with_one_rank(root, single_runs, tmp_path):
    out = tmp_path / "two"
    assert run_ranks(_interrupted_rank, root, out, 8, "interrupt") == [130, 130]
    assert not runs.is_finished(out)
    resumed_steps = []
    train.resume_finetune(out, on_event=lambda e: resumed_steps.append(e.step) if isinstance(e, events.StepDone) else None)
    # The checkpoint of step 5 (end of epoch 1) was the last: one rank replays steps 6-10.
    assert resumed_steps == [6, 7, 8, 9, 10]
    one = single_runs["last-block, batch 8"]
    assert weights_close(out, one) and metrics_close(out, one)


def test_a_dead_rank_stops_the_other_with_the_checkpoint_intact(root, tmp_path, monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "20")
    out = tmp_path / "two"
    tick = time.monotonic()
    codes = run_ranks(_interrupted_rank, root, out, 8, "kill", timeout=45)
    assert codes[1] == -signal.SIGKILL
    assert codes[0] == 1  # TrainingStopped: lost contact with the other ranks
    assert time.monotonic() - tick < 45
    state_steps = json.loads(__import__("safetensors").safe_open(str(runs.resume_file(out)), "pt").metadata()["loop"])
    assert state_steps["step"] == 5


def test_a_hung_rank_stops_the_other_at_the_timeout(root, tmp_path, monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "3")
    tick, exit_times = time.monotonic(), []
    codes = run_ranks(_interrupted_rank, root, tmp_path / "two", 8, "hang", timeout=15, exit_times=exit_times)
    assert codes[0] == 1 and codes[1] is None  # rank 1 still asleep, killed by the test
    assert exit_times[0] - tick < 15


# --------------------------------------------------------------------------- evaluation and prediction


def _evaluate_rank(rank: int, run_dir: Path, out: Path) -> None:
    distributed.init_from_env("cpu")
    result = evaluate_run(run_dir, split="all", device="cpu")
    if rank == 0:
        out.write_text(json.dumps(result))


def test_sharded_evaluation_reports_the_single_process_figures(single_runs, tmp_path):
    run_dir = single_runs["last-block, batch 8"]
    single = evaluate_run(run_dir, split="all", device="cpu")
    assert run_ranks(_evaluate_rank, run_dir, tmp_path / "two.json") == [0, 0]
    sharded = json.loads((tmp_path / "two.json").read_text())
    assert sharded["n"] == single["n"] == 60
    for figures, reference in [(sharded, single), *((sharded["by_split"][k], single["by_split"][k]) for k in single["by_split"])]:
        assert figures["accuracy"] == reference["accuracy"] and figures["confusion_matrix"] == reference["confusion_matrix"]
        assert figures["loss"] == pytest.approx(reference["loss"], abs=1e-6)
        assert figures["roc_auc"] == pytest.approx(reference["roc_auc"], abs=1e-9)



def _predict_rank(rank: int, argv: list[str]) -> None:
    app(argv, standalone_mode=False)


@pytest.fixture
def big_input(tmp_path) -> Path:
    lines = [f"message {i} " + ("win a prize !" if i % 3 == 0 else "see you at lunch") for i in range(53)]
    lines[7] = ""  # empty lines are messages too
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sharded_prediction_writes_the_single_process_output(tmp_path, big_input, monkeypatch):
    run_dir = write_rigged_run(tmp_path / "run")
    monkeypatch.setattr(predict_cli, "CHUNK_LINES", 5)  # several chunks, each split across the ranks
    common = ["predict", "--input", str(big_input), "--run", str(run_dir), "--device", "cpu", "--format", "jsonl"]
    single, sharded = tmp_path / "single.jsonl", tmp_path / "sharded.jsonl"
    assert app([*common, "--out", str(single)], standalone_mode=False) in (0, None)
    assert run_ranks(_predict_rank, [*common, "--out", str(sharded)]) == [0, 0]
    lines = sharded.read_text().splitlines()
    assert lines == single.read_text().splitlines() and len(lines) == 53
    assert [json.loads(line)["text"] for line in lines][:3] == ["message 0 win a prize !", "message 1 see you at lunch", "message 2 see you at lunch"]


def test_sharded_mail_prediction_writes_the_single_process_output(tmp_path, monkeypatch):
    """``predict --mail``: each rank classifies its share of every round of messages; rank 0
    writes them in the source's order, as one process does."""
    from spamtune import mail_filter
    from spamtune.cli import predict_mail

    box = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    for i in range(23):
        body = "you won a prize!" if i % 3 == 0 else "see you at lunch"
        (box / ("cur" if i < 17 else "new") / f"{i:02d}.host").write_bytes(f"Subject: note {i}\n\n{body}\n".encode())
    run_dir = write_rigged_run(tmp_path / "run")
    monkeypatch.setattr(mail_filter, "MAIL_CHUNK", 3)  # rounds of 3 messages per rank, the last one short
    common = ["predict", "--mail", str(box), "--run", str(run_dir), "--device", "cpu", "--format", "jsonl"]
    single, sharded = tmp_path / "single.jsonl", tmp_path / "sharded.jsonl"
    assert app([*common, "--out", str(single)], standalone_mode=False) in (0, None)
    real_share = predict_mail.classify_share

    def counted_share(classifier, messages, *args):  # how many messages each rank classified
        with open(tmp_path / f"classified.{os.getpid()}", "a") as f:
            f.write(f"{len(messages)}\n")
        return real_share(classifier, messages, *args)

    monkeypatch.setattr(predict_mail, "classify_share", counted_share)
    assert run_ranks(_predict_rank, [*common, "--out", str(sharded)]) == [0, 0]
    lines = sharded.read_text().splitlines()
    assert lines == single.read_text().splitlines() and len(lines) == 23
    # Rounds of 6: 3 + 3 messages, three times, then 5 left: 2 + 3.
    shares = sorted(sum(map(int, f.read_text().split())) for f in tmp_path.glob("classified.*"))
    assert shares == [11, 12]
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records][:2] == ["cur/00.host", "cur/01.host"] and records[-1]["id"] == "new/22.host"
    assert [r["label"] for r in records[:3]] == ["spam", "ham", "ham"]


def test_devices_launches_ranks_through_torchrun(tmp_path, big_input):
    """``--devices 2``: torch's elastic launcher starts two ranks; the output is the single one."""
    run_dir = write_rigged_run(tmp_path / "run")
    common = ["predict", "--input", str(big_input), "--run", str(run_dir), "--device", "cpu", "--format", "tsv"]
    single = tmp_path / "single.tsv"
    assert app([*common, "--out", str(single)], standalone_mode=False) in (0, None)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TMPDIR": str(temporary)}
    launched = subprocess.run([sys.executable, "-m", "spamtune", *common, "--devices", "2"], capture_output=True, env=env, timeout=120)
    assert launched.returncode == 0, launched.stderr.decode()[-2000:]
    assert launched.stdout == single.read_bytes() and launched.stdout.count(b"\n") == 53
    assert list(temporary.iterdir()) == []  # the launcher's log folder went with the ranks


def test_devices_looks_the_run_up_once_before_starting_any_rank(tmp_path, monkeypatch, capsys):
    """A missing run: one line from the launching process, not one per rank and the launcher's."""
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: launched.append(argv))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    (tmp_path / "in.txt").write_text("hello\n")
    missing = str(tmp_path / "no-such-run")
    for command in (["predict", "--input", str(tmp_path / "in.txt")], ["evaluate"]):
        assert app([*command, "--run", missing, "--devices", "2"], standalone_mode=False) == 1, command
        assert capsys.readouterr().err.splitlines() == [f"Error: run folder not found: {missing}"]
    assert launched == []


def test_devices_checks_the_input_and_the_device_once_before_starting_any_rank(tmp_path, monkeypatch, capsys):
    """A missing --input, or --device cuda where there is none: each rank said so, then the
    launcher that rank 0 exited; one line from the launching process instead."""
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: launched.append(argv))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_dir = str(write_rigged_run(tmp_path / "run"))
    (tmp_path / "in.txt").write_text("hello\n")
    missing = tmp_path / "no-such-input.txt"
    refused = {
        "predict input": (["predict", "--input", str(missing)], f"Error: cannot read {missing}: No such file or directory"),
        "evaluate input": (["evaluate", "--input", str(missing)], f"Error: input file not found: {missing}"),
    }
    cuda = "Error: --device cuda: CUDA is not available in this PyTorch build or machine"
    for command in (["predict", "--input", str(tmp_path / "in.txt")], ["evaluate"], ["finetune", "--resume"]):
        refused[f"{command[0]} cuda"] = ([*command, "--device", "cuda"], cuda)
    for name, (command, line) in refused.items():
        assert app([*command, "--run", run_dir, "--devices", "2"], standalone_mode=False) == 1, name
        assert capsys.readouterr().err.splitlines() == [line], name
    assert launched == []


def test_devices_refuses_to_resume_a_finished_or_missing_run_before_starting_any_rank(tmp_path, monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: launched.append(argv))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    finished = write_rigged_run(tmp_path / "run")
    (finished / runs.SUMMARY_FILE).write_text("{}")  # what a completed training leaves
    assert runs.is_finished(finished)
    missing = tmp_path / "no-such-run"
    for run, line in ((finished, f"Error: {finished} is a finished run; nothing to resume"), (missing, f"Error: run folder not found: {missing}")):
        assert app(["finetune", "--resume", "--run", str(run), "--devices", "2"], standalone_mode=False) == 1, run
        assert capsys.readouterr().err.splitlines() == [line]
    assert launched == []


def test_devices_beyond_the_cores_is_refused_before_any_rank_starts(tmp_path, monkeypatch, capsys):
    """More CPU ranks than cores only slows training: one usage line, nothing launched."""
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: launched.append(nproc))
    monkeypatch.setattr(distributed, "usable_cores", lambda: 4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "in.txt").write_text("hello\n")
    for command in (
        ["finetune", "--device", "cpu", "--data-dir", str(tmp_path)],
        ["finetune", "--resume", "--run", str(tmp_path / "run"), "--data-dir", str(tmp_path)],
        ["predict", "--input", str(tmp_path / "in.txt"), "--run", str(tmp_path / "run")],
        ["evaluate", "--run", str(tmp_path / "run")],
    ):
        assert app([*command, "--devices", "64"], standalone_mode=False) == 2, command
        assert capsys.readouterr().err.splitlines() == [
            "Error: --devices 64 asks for more CPU ranks than the 4 cores this process may use, "
            "which only slows training; pass at most --devices 4"
        ], command
    assert launched == []
    assert distributed.will_launch(4, "cpu") and launched == []
    monkeypatch.setattr(distributed, "usable_cores", lambda: 1)
    assert distributed.will_launch(2, "cpu")  # two ranks are always allowed, to try the path anywhere


def test_devices_beyond_the_gpus_is_refused_unless_the_ranks_run_on_the_cpu(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed, "usable_cores", lambda: 8)
    assert distributed.will_launch(2, "auto") and distributed.will_launch(2, "cuda")
    for device in ("auto", "cuda"):
        with pytest.raises(SpamtuneUsageError) as err:
            distributed.will_launch(3, device)
        assert str(err.value) == (
            "--devices 3 asks for more ranks than the 2 GPUs this machine has (each rank takes one); "
            "pass at most --devices 2, or --device cpu"
        )
    assert distributed.will_launch(3, "cpu")


def test_ranks_refuse_stdin_with_one_line(tmp_path, monkeypatch, capsys):
    """Every rank would read the same stdin; a file is the shareable input."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = app(["predict", "-", "--run", str(tmp_path)], standalone_mode=False)
    assert code == 2
    assert capsys.readouterr().err.strip() == "Error: several processes classify a file, not stdin: give --input PATH"
    code = app(["predict", "--mail", "-", "--run", str(tmp_path)], standalone_mode=False)
    assert code == 2
    assert capsys.readouterr().err.strip() == "Error: several processes classify a mail source they can all read, not stdin: give --mail PATH"


def test_ctrl_c_to_the_launcher_is_one_line_not_one_per_rank(tmp_path):
    """Ctrl-C reaches the launcher, which passes it on to every rank: one `Error: interrupted`."""
    run_dir = write_rigged_run(tmp_path / "run")
    big = tmp_path / "big.txt"
    big.write_text("free prize now\n" * 2_000_000)  # minutes of work: stopped long before the end
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = ["predict", "--input", str(big), "--run", str(run_dir), "--device", "cpu", "--devices", "2"]
    launcher = subprocess.Popen([sys.executable, "-m", "spamtune", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert launcher.stdout.readline()  # the ranks are classifying
        launcher.send_signal(signal.SIGINT)
        out, err = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode == 130
    assert [line for line in err.decode().splitlines() if "rror" in line] == ["Error: interrupted"]


def test_an_interrupted_launcher_adds_its_line_only_when_rank_0_said_nothing(tmp_path, monkeypatch, capsys):
    """finetune's rank 0 says what it kept and the --resume command; then the launcher says
    nothing more. Other commands' ranks say nothing, and the launcher says it once. SIGTERM
    exits 143."""
    import torch.distributed.run as torch_run
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from spamtune.interrupts import tell_the_launcher_it_was_said

    def ranks(rank_0_says: bool):
        def run(args):
            if rank_0_says:
                with monkeypatch.context() as rank_0:
                    rank_0.setenv("WORLD_SIZE", "2")
                    rank_0.setenv("RANK", "0")
                    tell_the_launcher_it_was_said()
            raise SignalException("stopped", signal.SIGTERM)

        return run

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run_dir = write_rigged_run(tmp_path / "run")
    (tmp_path / "in.txt").write_text("hello\n")
    command = ["predict", "--input", str(tmp_path / "in.txt"), "--run", str(run_dir), "--devices", "2"]
    for rank_0_says, lines in ((False, ["Error: interrupted"]), (True, [])):
        monkeypatch.setattr(torch_run, "run", ranks(rank_0_says))
        assert app(command, standalone_mode=False) == 143
        assert capsys.readouterr().err.splitlines() == lines
    assert "SPAMTUNE_INTERRUPT_NOTE" not in os.environ
