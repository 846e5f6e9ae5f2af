"""Many runs, cheaply, end to end: kept prefix caches, LoRA, schedules, compact runs, sweeps."""

import json
import threading
from dataclasses import replace

import pytest
import torch
from helpers import TINY_CONFIG, ctrl_c_at_step, tiny_options, write_tiny_data
from typer.testing import CliRunner

from spamtune import SpamClassifier, base_model, events, train
from spamtune.cache_catalog import list_caches
from spamtune.cache_entry import STATES_FILE
from spamtune.checkpoint import load_classifier
from spamtune.cli import app
from spamtune.export import export_run, read_exported
from spamtune.device import Precision, cpu_has_native_bf16
from spamtune.examples import Batch, Examples
from spamtune.forward import predict_logits
from spamtune.lora import lora_parameter_count
from spamtune.idle_work import idle_priority_available
from spamtune.tokenizer import get_tokenizer
from spamtune.model import GPTConfig

CFG = GPTConfig(**TINY_CONFIG)
METRICS = ("validation_loss", "validation_accuracy", "test_loss", "test_accuracy", "best_step", "train_loss")


def collect():
    seen = []
    return seen, seen.append


def cache_reports(seen):
    return [e for e in seen if isinstance(e, events.PrefixCacheReport)]


@pytest.fixture
def root(tmp_path):
    return write_tiny_data(tmp_path / "data")


def batched_logits(model, token_lists):
    return predict_logits(model, Examples(token_lists, [0] * len(token_lists)), "last-real", precision=Precision("fp32", "cpu"))


def test_a_second_run_loads_the_kept_cache_and_gives_the_same_metrics(root, tmp_path):
    seen, on_event = collect()
    cold = train.finetune(tiny_options(root), tmp_path / "r1", on_event)
    warm = train.finetune(tiny_options(root), tmp_path / "r2", on_event)
    plain = train.finetune(tiny_options(root, keep_cache=False), tmp_path / "r3", on_event)
    assert [r.source for r in cache_reports(seen)] == ["stored", "hit", "built"]
    assert cold["prefix_cache"]["source"] == "stored" and warm["prefix_cache"]["source"] == "hit"
    for name in METRICS:
        assert warm[name] == cold[name] == plain[name], name
    assert len(list_caches(root)) == 1
    # Where a core is left idle by the steps, the cold runs finished the test split's states behind them.
    behind = torch.get_num_threads() > 1 and idle_priority_available()
    for summary in (cold, plain):
        assert summary["prefix_cache"].get("background") == (["test"] if behind else None)
        assert ("background_wait_s" in summary["prefix_cache"]) == behind
    assert "background" not in warm["prefix_cache"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_first_run_keeps_the_same_states_and_figures_whatever_its_thread_count(tmp_path, precision):
    """A later run reads whatever cache an earlier one kept: one run on one thread and one on
    two must keep the same states, or a run's figures would depend on which ran first. Each
    batch of the build runs with one OpenMP thread, in the same batches on any thread count
    (the test split's apart, computed behind the steps or not)."""
    if precision == "bf16" and not cpu_has_native_bf16():
        pytest.skip("no native bf16 on this CPU")
    before = torch.get_num_threads()
    summaries, states = [], []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            root = write_tiny_data(tmp_path / f"data-{threads}")
            summaries.append(train.finetune(tiny_options(root, precision=precision, eval_every=5), tmp_path / f"r{threads}"))
            (entry,) = list_caches(root)
            states.append((entry.path / STATES_FILE).read_bytes())
    finally:
        torch.set_num_threads(before)
    assert summaries[0]["prefix_cache"].get("background") is None  # one thread: built at once
    assert states[0] == states[1]
    for name in METRICS:
        assert summaries[0][name] == summaries[1][name], name
    metrics = [[{k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "examples_per_s")}
                for line in (tmp_path / f"r{t}" / "metrics.jsonl").read_text().splitlines()] for t in (1, 2)]  # fmt: skip
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize(
    ("options", "stop", "threads", "steps"),
    [
        ({}, False, 2, 1),
        ({}, True, 2, 1),
        # More threads: half to the background workers, the rest to the steps (idle_work.split_threads).
        ({}, False, 4, 2),
        ({}, True, 4, 2),
        ({}, False, 3, 2),
        # Steps whose rounding depends on the thread count keep them all: their numbers would
        # otherwise depend on how long the states took (train.steps_agree_across_threads).
        ({"pooling": "mean"}, False, 2, 2),
        ({"pooling": "mean"}, False, 4, 4),
        ({"trainable": "last-2-blocks"}, False, 2, 2),
        ({"trainable": "lora", "lora_blocks": 1}, False, 2, 2),
    ],
)
def test_the_steps_leave_cores_to_the_states_computed_behind_them_and_take_them_back(root, tmp_path, monkeypatch, options, stop, threads, steps):
    """The steps' share of the threads while a split's states are computed behind them, all of
    them once they are done, and all of them after the run, finished or stopped by Ctrl-C (a
    sweep's next run starts with them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    behind = iter([True] * 3)
    monkeypatch.setattr(train, "computing_behind", lambda data: next(behind, False))
    used, real_step = [], train.optimizer_step
    monkeypatch.setattr(train, "optimizer_step", lambda *a, **k: used.append(torch.get_num_threads()) or real_step(*a, **k))
    if stop:
        ctrl_c_at_step(monkeypatch, 2)
    try:
        if stop:
            with pytest.raises(events.TrainingInterrupted):
                train.finetune(tiny_options(root, **options), tmp_path / "r1")
            assert used == [steps]
        else:
            summary = train.finetune(tiny_options(root, **options), tmp_path / "r1")
            assert used[:3] == [steps] * 3 and set(used[3:]) == {threads}
            assert (summary["cpu_threads"], summary["step_threads"]) == (threads, sorted({steps, threads}))
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("threads", "cores_for_others", "behind", "steps"),
    [(2, 0, False, 2), (2, 1, False, 1), (2, 5, False, 1), (16, 3, False, 13), (16, 3, True, 8), (16, 10, True, 6), (1, 1, False, 1)],
)
def test_the_steps_leave_the_cores_others_want(monkeypatch, threads, cores_for_others, behind, steps):
    monkeypatch.setattr(train, "computing_behind", lambda data: behind)
    assert train.threads_for_steps(None, threads, cores_for_others) == steps


class ScriptedWatch:
    """A ``threads.CoreWatch`` that sees other processes want the cores it is told, step by step."""

    wanted: list[int] = []

    def __init__(self):
        self.polls = iter(self.wanted)

    def poll(self) -> int:
        return next(self.polls, 0)


@pytest.mark.parametrize(("options", "watched"), [({}, True), ({"trainable": "last-2-blocks"}, False), ({"pooling": "mean"}, False)])
def test_a_run_that_spins_long_steps_on_one_thread_while_others_want_the_cores(root, tmp_path, monkeypatch, options, watched):
    """Only steps whose numbers do not depend on the thread count give cores back, and the
    run's figures are those of a run that never did."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        reference = train.finetune(tiny_options(root, **options), tmp_path / "alone")
        monkeypatch.setattr(train, "spins_long", lambda: True)
        monkeypatch.setattr(ScriptedWatch, "wanted", [0, 1, 2, 1, 0, 0])
        monkeypatch.setattr(train, "CoreWatch", ScriptedWatch)
        monkeypatch.setattr(train, "computing_behind", lambda data: False)
        used, real_step = [], train.optimizer_step
        monkeypatch.setattr(train, "optimizer_step", lambda *a, **k: used.append(torch.get_num_threads()) or real_step(*a, **k))
        summary = train.finetune(tiny_options(root, **options), tmp_path / "shared")
        assert used[:6] == ([2, 1, 1, 1, 2, 2] if watched else [2] * 6) and set(used[6:]) == {2}
        assert summary["step_threads"] == ([1, 2] if watched else [2])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    for name in METRICS:
        assert summary[name] == reference[name], name


def test_ctrl_c_while_the_test_split_is_cached_behind_leaves_no_entry_and_no_thread(root, tmp_path, monkeypatch):
    ctrl_c_at_step(monkeypatch, 3)
    with pytest.raises(events.TrainingInterrupted):
        train.finetune(tiny_options(root), tmp_path / "r1")
    assert not any(t.name.startswith("spamtune-prefix-cache") for t in threading.enumerate())  # every worker
    assert [e.status for e in list_caches(root)] in ([], ["interrupted"])  # no meta.json: what was written, kept to resume
    assert not any(p.name.endswith(".part") for p in (root / "cache").rglob("*"))
    monkeypatch.undo()
    again = train.finetune(tiny_options(root), tmp_path / "r2")
    plain = train.finetune(tiny_options(root, keep_cache=False), tmp_path / "r3")
    assert again["prefix_cache"]["source"] == "stored" and all(again[name] == plain[name] for name in METRICS)


def test_a_second_run_reads_its_random_base_from_the_store_instead_of_drawing_it(root, tmp_path, monkeypatch):
    from spamtune.bases import ORIGINS_FILE

    cold = train.finetune(tiny_options(root), tmp_path / "r1")
    assert (root / "bases" / ORIGINS_FILE).is_file()
    drawn = []
    real_draw_base = base_model.draw_base
    monkeypatch.setattr(base_model, "draw_base", lambda *a: drawn.append(a) or real_draw_base(*a))
    warm = train.finetune(tiny_options(root), tmp_path / "r2")
    assert not drawn and all(warm[name] == cold[name] for name in METRICS)
    for stored in (root / "bases").glob("*.safetensors"):
        stored.unlink()  # gone from the store: the base is drawn again, to the same result
    again = train.finetune(tiny_options(root), tmp_path / "r3")
    assert len(drawn) == 1 and all(again[name] == cold[name] for name in METRICS)
    another_seed = train.finetune(tiny_options(root, seed=7), tmp_path / "r4")
    assert len(drawn) == 2 and another_seed["validation_loss"] != cold["validation_loss"]


def test_a_corrupted_cache_is_rebuilt_by_the_next_run(root, tmp_path):
    first = train.finetune(tiny_options(root), tmp_path / "r1")
    states = list_caches(root)[0].path / STATES_FILE
    raw = bytearray(states.read_bytes())
    raw[100] ^= 0x40
    states.write_bytes(bytes(raw))
    seen, on_event = collect()
    again = train.finetune(tiny_options(root), tmp_path / "r2", on_event)
    report = cache_reports(seen)[0]
    assert report.source == "stored" and report.detail.startswith("rebuilt: ") and "sha256" in report.detail
    assert all(again[name] == first[name] for name in METRICS)


def test_a_cache_of_fewer_frozen_blocks_is_extended(tmp_path):
    root = write_tiny_data(tmp_path / "data")
    (root / "tiny3.json").write_text(json.dumps({**TINY_CONFIG, "n_layers": 3}))
    options = tiny_options(root, model=str(root / "tiny3.json"), epochs=1)
    seen, on_event = collect()
    train.finetune(replace(options, trainable="last-2-blocks"), tmp_path / "r1", on_event)
    summary = train.finetune(options, tmp_path / "r2", on_event)  # last-block: 2 frozen blocks
    first, second = cache_reports(seen)
    assert (first.start_block, first.source) == (1, "stored")
    assert (second.start_block, second.source, second.detail) == (2, "extended", "from the 1-block cache")
    assert summary["prefix_cache"]["blocks"] == 2


def test_lora_run_trains_a_b_and_head_and_writes_a_plain_classifier(root, tmp_path):
    options = tiny_options(root, trainable="lora", lora_rank=4, lora_alpha=8, lora_blocks=1)
    summary = train.finetune(options, tmp_path / "run")
    assert summary["trainable_params"] == lora_parameter_count(CFG, 4, 1) + CFG.emb_dim * 2 + 2
    assert summary["prefix_cache"]["blocks"] == 1  # LoRA on the last block: the first is cached
    model, cfg = load_classifier(tmp_path / "run")  # merged: a plain classifier's keys
    assert cfg.trainable == "lora" and not any(".lora_" in k for k in model.state_dict())
    clf = SpamClassifier.load(tmp_path / "run", device="cpu", precision="fp32")
    test = [line.split(",", 1) for line in (root / "test.csv").read_text().splitlines()[1:]]
    assert len(clf.predict([t for _, t in test[:3]])) == 3


def test_lora_differs_from_its_base_and_from_last_block(root, tmp_path):
    lora = train.finetune(tiny_options(root, trainable="lora", lora_rank=4), tmp_path / "a")
    block = train.finetune(tiny_options(root), tmp_path / "b")
    assert lora["validation_loss"] != block["validation_loss"]
    assert lora["trainable_params"] == lora_parameter_count(CFG, 4) + CFG.emb_dim * 2 + 2


def test_compact_run_predicts_what_its_export_predicts(root, tmp_path):
    full = train.finetune(tiny_options(root, trainable="lora", lora_rank=4, compact=False), tmp_path / "full")
    compact = train.finetune(tiny_options(root, trainable="lora", lora_rank=4), tmp_path / "compact")  # compact: the default
    run = tmp_path / "compact"
    assert (run / "delta.safetensors").is_file() and (run / "base.json").is_file() and not (run / "model.safetensors").exists()
    assert all(compact[name] == full[name] for name in METRICS)
    assert len(list((root / "bases").glob("*.safetensors"))) == 1
    delta = (run / "delta.safetensors").stat().st_size
    assert delta < (tmp_path / "full" / "model.safetensors").stat().st_size / 5
    texts = ["WINNER!! free prize, call now", "see you at lunch", "Claim your cash reward today"]
    # The class logits: the run's calibration (a temperature in calibration.json) is no part of
    # the exported weights.
    ids = [get_tokenizer().encode(t) for t in texts]
    from_run = batched_logits(SpamClassifier.load(run, device="cpu", precision="fp32").model, ids)
    model, cfg = read_exported(export_run(run, tmp_path / "x.safetensors"))
    assert cfg.trainable == "lora" and torch.equal(from_run, batched_logits(model, ids))


def test_schedule_and_resume_continue_the_same_rates(root, tmp_path):
    options = tiny_options(root, schedule="cosine", warmup_steps=3, epochs=2)
    whole = train.finetune(options, tmp_path / "whole")
    constant = train.finetune(tiny_options(root, epochs=2), tmp_path / "constant")
    assert whole["validation_loss"] != constant["validation_loss"]

    def stop(event):
        if isinstance(event, events.StepDone) and event.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(events.TrainingInterrupted):
        train.finetune(options, tmp_path / "stopped", stop)
    resumed = train.resume_finetune(tmp_path / "stopped")
    assert all(resumed[name] == whole[name] for name in METRICS)


def test_clipping_bounds_the_update_of_a_plain_sgd_step():
    torch.manual_seed(0)
    from spamtune.model import GPTModel, convert_to_classifier

    model = convert_to_classifier(GPTModel(CFG), trainable="all")
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    batch = Batch(ids, torch.tensor([4, 4]), torch.tensor([0, 1]))
    train.optimizer_step(model, optimizer, [batch], "last-real", Precision("fp32", "cpu"), clip_grad_norm=1e-3)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert moved.item() == pytest.approx(1e-3, rel=1e-3)


def test_cli_finetune_lora_then_sweep_resumes(root):
    runner = CliRunner()
    common = ["--model", str(root / "tiny.json"), "--weights", "random", "--device", "cpu", "--precision", "fp32", "--data-dir", str(root)]
    result = runner.invoke(app, ["finetune", *common, "--epochs", "1", "--trainable", "lora", "--lora-rank", "2", "--lora-blocks", "1", "--schedule", "linear", "--warmup-steps", "2", "--clip-grad-norm", "1.0"])
    assert result.exit_code == 0, result.output
    assert "computed once and kept for later runs" in result.stderr
    sweep = ["sweep", *common, "--epochs", "1", "--lr", "1e-3,3e-3", "--trainable", "last-block,lora"]
    first = runner.invoke(app, sweep)
    assert first.exit_code == 0, first.output
    path = first.stdout.strip().splitlines()[-1]
    saved = json.loads(open(path).read())
    assert len(saved["runs"]) == 4 and {r["status"] for r in saved["runs"]} == {"done"} and saved["best"] == saved["runs"][0]["name"]
    assert "best" in first.stderr and "val loss" in first.stderr
    # One column per swept option; in a pipe the table keeps its natural width, nothing cut.
    header = next(line for line in first.stderr.splitlines() if "val loss" in line and "┃" in line)
    assert "trainable" in header and " lr " in header and "…" not in first.stderr
    rows = [line for line in first.stderr.splitlines() if "last-block" in line or "lora" in line]
    assert {"0.001", "0.003"} <= {cell.strip() for line in rows for cell in line.split("│")}
    again = runner.invoke(app, sweep)
    assert again.exit_code == 0 and again.stdout.strip().splitlines()[-1] == path
    assert again.stderr.count("finished earlier, skipped") == 4


def test_a_second_run_hashes_neither_the_base_nor_the_cache_that_the_first_one_wrote(root, tmp_path, monkeypatch):
    """The first run hashed both as it wrote them, and the index of checked files says so."""
    from spamtune import bases, cache_store

    train.finetune(tiny_options(root), tmp_path / "r1")
    hashed = []
    hash_file, hash_tensor = cache_store.sha256_file, bases._hash_tensor
    monkeypatch.setattr(cache_store, "sha256_file", lambda path: hashed.append(path.name) or hash_file(path))
    monkeypatch.setattr(bases, "_hash_tensor", lambda digest, name, t: hashed.append(name) or hash_tensor(digest, name, t))
    seen, on_event = collect()
    train.finetune(tiny_options(root), tmp_path / "r2", on_event)
    assert [r.source for r in cache_reports(seen)] == ["hit"]
    assert STATES_FILE not in hashed and "tok_emb.weight" not in hashed
