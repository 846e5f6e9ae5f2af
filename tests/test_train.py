"""Fine-tuning: the loop learns, freezes what it should, is reproducible and resumable, and
its CLI fails with one clear line on bad input. Tiny models and ~60 messages: seconds each."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
from conftest import write_hf_gpt2
from helpers import HAM, SPAM, TINY_CONFIG, ctrl_c_at_step, run_weights, tiny_options, tiny_split, write_tiny_data
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from spamtune import base_model, checkpoint, events, examples, forward, options, prefix_cache, run_catalog, runs, train
from spamtune.cli import app
from spamtune.device import Precision
from spamtune.errors import SpamtuneError
from spamtune.model import GPTConfig, GPTModel, Trainable, convert_to_classifier
from spamtune.tokenizer import encode_texts
from spamtune.weights import load_pretrained_weights

FP32 = Precision("fp32", "cpu")


def comparable(records: list[dict]) -> list[dict]:
    """Metrics lines without their wall-clock times."""
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


RESULT_KEYS = ("test_accuracy", "test_loss", "validation_accuracy", "validation_loss", "train_accuracy", "train_loss", "best_step")


@pytest.fixture
def data_root(tmp_path) -> Path:
    return write_tiny_data(tmp_path / "data")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny last-block run, shared by the tests that only read it."""
    root = write_tiny_data(tmp_path_factory.mktemp("data"))
    summary = train.finetune(tiny_options(root), root / "runs" / "one")
    return Path(summary["run"]), summary


LAST_BLOCK = Trainable.parse("last-block", TINY_CONFIG["n_layers"])


def visible_files(run_dir: Path) -> list[str]:
    """The files of a finished run's folder (its lock file goes with the end of training)."""
    return sorted(p.name for p in run_dir.iterdir())


def tiny_model(trainable: str = "last-block") -> GPTModel:
    torch.manual_seed(0)
    return convert_to_classifier(GPTModel(GPTConfig(**TINY_CONFIG)), 2, trainable, seed=1)


# --------------------------------------------------------------------------- the loop


def test_one_training_step_lowers_the_loss():
    model = tiny_model()
    split = tiny_split(16, 0)
    batch = examples.Examples(encode_texts(split.texts), split.labels).batch(list(range(16)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = forward.calc_loss_batch(model, batch, "last-real").item()
    reported = train.optimizer_step(model, optimizer, [batch], "last-real", FP32)
    after = forward.calc_loss_batch(model, batch, "last-real").item()
    assert reported == pytest.approx(before, rel=1e-6)
    assert after < before


def test_accuracy_decides_a_tie_as_evaluate_and_predict_do(monkeypatch):
    """Equal logits (common in bf16) are spam at the threshold 0.5, so a run's summary accuracy
    is the one ``spamtune evaluate`` reports for it."""
    from spamtune.checkpoint import ClassifierConfig
    from spamtune.evaluate import _decisions

    logits = torch.tensor([[0.25, 0.25], [2.0, -1.0], [-1.0, 0.5], [0.25, 0.25]])
    split = examples.Examples([[1], [2], [3], [4]], [1, 0, 1, 0])
    monkeypatch.setattr(forward, "predict_logits", lambda *args, **kwargs: logits)
    cfg = ClassifierConfig(model=GPTConfig(**TINY_CONFIG))
    decided = _decisions(logits, cfg, 0.5)
    assert decided.tolist() == [1, 0, 1, 1]
    _, accuracy = forward.evaluate_examples(None, split, "last-real", positive=cfg.labels[cfg.positive_label])
    assert accuracy == (decided == torch.tensor(split.labels)).float().mean().item() == 0.75
    # Swapped labels: ties go to spam, whatever its index.
    swapped = ClassifierConfig(model=GPTConfig(**TINY_CONFIG), labels={"spam": 0, "ham": 1})
    assert _decisions(logits, swapped, 0.5).tolist() == forward.decided_classes(logits, 0).tolist() == [0, 0, 1, 0]


def test_gradient_accumulation_equals_one_big_batch():
    split = examples.Examples(encode_texts(tiny_split(12, 0).texts), tiny_split(12, 0).labels)
    params = []
    for groups in ([list(range(12))], [list(range(8)), list(range(8, 12))]):
        model = tiny_model("all")
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is the gradient itself
        train.optimizer_step(model, optimizer, [split.batch(g) for g in groups], "last-real", FP32)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(params[0], params[1], atol=1e-6, rtol=1e-5)


def test_frozen_parameters_stay_bit_identical(finished_run):
    run_dir, _ = finished_run
    trained = run_weights(run_dir)
    root = run_dir.parents[1]
    fresh = train.build_model(GPTConfig(**TINY_CONFIG), tiny_options(root), LAST_BLOCK, 2).state_dict()
    frozen = [k for k in fresh if k.startswith(("tok_emb.", "pos_emb.", "trf_blocks.0."))]
    assert frozen and all(torch.equal(trained[k], fresh[k]) for k in frozen)
    trainable = [k for k in fresh if k.startswith(("trf_blocks.1.", "final_norm.", "out_head."))]
    assert all(not torch.equal(trained[k], fresh[k]) for k in trainable)


def test_run_folder_holds_exactly_its_files(finished_run):
    run_dir, summary = finished_run
    assert visible_files(run_dir) == sorted(runs.finished_run_files())
    records = runs.read_metrics(run_dir)
    assert [r["step"] for r in records] == [5, 10] and [r["epoch"] for r in records] == [1.0, 2.0]
    assert records[-1]["examples_seen"] == 80
    best = min(records, key=lambda r: (r["validation_loss"], -r["validation_accuracy"]))
    assert summary["best_step"] == best["step"] and summary["validation_loss"] == best["validation_loss"]
    # metrics.jsonl itself (not just its reader) spells the figures as summary.json does
    written = json.loads((run_dir / runs.METRICS_FILE).read_text().splitlines()[0])
    shared = ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy")
    assert all(key in written and key in summary for key in shared)
    hparams = json.loads((run_dir / "hparams.json").read_text())
    assert hparams["epochs"] == 2 and hparams["lr"] == 1e-3 and hparams["resolved"]["max_length"] == summary["max_length"]
    assert json.loads((run_dir / "config.json").read_text())["labels"] == {"ham": 0, "spam": 1}
    curves = ElementTree.fromstring((run_dir / "curves.svg").read_text())  # well-formed SVG
    lines = [e for e in curves.iter() if e.tag.endswith("polyline")]
    assert len(lines) == 4 and all(len(e.get("points").split()) == len(records) for e in lines)  # 2 panels x 2 curves
    assert summary["trainable_params"] < summary["total_params"]


def test_pretrained_weights_are_the_frozen_part_of_the_trained_model(data_root, monkeypatch):
    """--weights pretrained: the file's tensors (HF layout) end up, untouched, as every frozen
    weight of the run's model.safetensors; the trainable ones moved away from them."""
    hf_file = write_hf_gpt2(data_root / "hf" / "model.safetensors", emb_dim=32, context=64, buffers=True)
    monkeypatch.setattr(base_model, "pretrained_weights_file", lambda cfg, spec, root: hf_file)
    monkeypatch.setattr(options, "pretrained_weights_file", lambda cfg, spec, root: hf_file)
    summary = train.finetune(tiny_options(data_root, weights="pretrained", epochs=1), data_root / "runs" / "pre")
    trained = run_weights(Path(summary["run"]))
    reference = load_pretrained_weights(GPTModel(GPTConfig(**TINY_CONFIG)), hf_file).state_dict()
    frozen = [k for k in trained if not k.startswith(("trf_blocks.1.", "final_norm.", "out_head."))]
    assert "tok_emb.weight" in frozen and all(torch.equal(trained[k], reference[k]) for k in frozen)
    assert not torch.equal(trained["trf_blocks.1.ff.fc.weight"], reference["trf_blocks.1.ff.fc.weight"])
    # A second run on the file finds its base stored under the same hash: nothing is written again.
    from spamtune import bases

    written = []
    real_write = bases.TensorFileWriter.write
    monkeypatch.setattr(bases.TensorFileWriter, "write", lambda *a: written.append(a[1]) or real_write(*a))
    again = train.finetune(tiny_options(data_root, weights="pretrained", epochs=1), data_root / "runs" / "pre-2")
    assert not written and again["test_accuracy"] == summary["test_accuracy"]


def test_same_seed_same_metrics(data_root, finished_run):
    _, first = finished_run
    second = train.finetune(tiny_options(data_root), data_root / "runs" / "two")
    assert {k: first[k] for k in RESULT_KEYS} == {k: second[k] for k in RESULT_KEYS}
    assert comparable(runs.read_metrics(Path(first["run"]))) == comparable(runs.read_metrics(Path(second["run"])))


@pytest.mark.parametrize("interrupt_at", [2, 7])
def test_resume_continues_where_it_stopped_and_reaches_the_same_metrics(data_root, interrupt_at):
    options = tiny_options(data_root, epochs=3, eval_every=3)
    reference = train.finetune(options, data_root / "runs" / "whole")

    def stop_at_step(event):
        if isinstance(event, events.StepDone) and event.step == interrupt_at:
            raise KeyboardInterrupt

    run_dir = data_root / "runs" / "cut"
    with pytest.raises(events.TrainingInterrupted) as caught:
        train.finetune(options, run_dir, on_event=stop_at_step)
    assert caught.value.step == interrupt_at
    assert caught.value.checkpoint_step == interrupt_at // 3 * 3  # the last evaluation before it
    assert (run_dir / runs.RESUME_DIR / runs.RESUME_FILE).is_file()
    assert not (run_dir / runs.SUMMARY_FILE).exists()
    # The best weights so far are written on the way out, and only once there are some.
    best_step = caught.value.best_step
    assert (best_step is None) == (interrupt_at < 3) == (runs.weights_file(run_dir) is None)
    if best_step is not None:
        resume_state = load_file(str(run_dir / runs.RESUME_DIR / runs.RESUME_FILE))
        written = run_weights(run_dir)
        best = {k.removeprefix("best."): v for k, v in resume_state.items() if k.startswith("best.")}
        assert best and all(torch.equal(written[k], v) for k, v in best.items())

    steps = []
    resumed = train.resume_finetune(run_dir, on_event=lambda e: steps.append(e.step) if isinstance(e, events.StepDone) else None)
    assert steps[0] == caught.value.checkpoint_step + 1 and steps[-1] == 15
    assert {k: resumed[k] for k in RESULT_KEYS} == {k: reference[k] for k in RESULT_KEYS}
    assert comparable(runs.read_metrics(run_dir)) == comparable(runs.read_metrics(Path(reference["run"])))
    assert visible_files(run_dir) == sorted(runs.finished_run_files())
    ours, theirs = (run_weights(Path(d)) for d in (run_dir, reference["run"]))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(SpamtuneError, match="finished run"):
        train.resume_finetune(run_dir)


def test_a_run_interrupted_under_the_old_metric_names_resumes_to_the_same_result(data_root):
    """Runs stopped before metrics.jsonl took summary.json's names (``val_loss``, ...) still resume."""
    options = tiny_options(data_root, epochs=3, eval_every=3)
    reference = train.finetune(options, data_root / "runs" / "whole")
    run_dir = data_root / "runs" / "old"
    with pytest.raises(events.TrainingInterrupted):
        train.finetune(options, run_dir, on_event=lambda e: ctrl_c_if(isinstance(e, events.StepDone) and e.step == 7))
    old = {"train_accuracy": "train_acc", "validation_loss": "val_loss", "validation_accuracy": "val_acc"}
    records = [{old.get(k, k): v for k, v in r.items()} for r in runs.read_metrics(run_dir)]
    (run_dir / runs.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    resume_file = run_dir / runs.RESUME_DIR / runs.RESUME_FILE
    with safe_open(str(resume_file), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    loop = json.loads(metadata["loop"])
    assert loop["best"]["validation_loss"]  # the checkpoint held the new names: write them the old way
    loop["best"] = {old.get(k, k): v for k, v in loop["best"].items()}
    save_file(tensors, str(resume_file), {**metadata, "loop": json.dumps(loop)})

    resumed = train.resume_finetune(run_dir)
    assert {k: resumed[k] for k in RESULT_KEYS} == {k: reference[k] for k in RESULT_KEYS}
    assert comparable(runs.read_metrics(run_dir)) == comparable(runs.read_metrics(Path(reference["run"])))


def ctrl_c_if(condition: bool) -> None:
    if condition:
        raise KeyboardInterrupt


def test_early_stopping_counts_evaluations_without_improvement(data_root, monkeypatch):
    monkeypatch.setattr(train, "evaluate_examples", lambda *args, **kwargs: (1.0, 0.5))
    summary = train.finetune(tiny_options(data_root, epochs=5, eval_every=2, patience=2), data_root / "runs" / "early")
    # Evaluations at steps 2 (best), 4 and 5 (the end of epoch 1): two without improvement.
    assert summary["stopped_early"] and summary["best_step"] == 2 and summary["steps"] == 5


def test_nan_loss_stops_with_a_clear_message(data_root, monkeypatch):
    monkeypatch.setattr(train, "calc_loss_batch", lambda *args: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(SpamtuneError, match=r"loss became nan at step 1 .*lower learning rate"):
        train.finetune(tiny_options(data_root), data_root / "runs" / "nan")


def test_a_diverged_run_is_listed_as_failed_until_a_resume_succeeds(data_root, monkeypatch):
    real_loss, calls = train.calc_loss_batch, []

    def diverging_after_the_first_checkpoint(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss if len(calls) <= 5 else loss * float("inf")  # the first epoch (5 steps) is sound

    monkeypatch.setattr(train, "calc_loss_batch", diverging_after_the_first_checkpoint)
    run_dir = data_root / "runs" / "diverged"
    with pytest.raises(SpamtuneError, match=r"loss became"):
        train.finetune(tiny_options(data_root), run_dir)
    assert runs.resume_file(run_dir).is_file()  # the checkpoint stays, yet the run is not "interrupted"
    failure = json.loads((run_dir / runs.FAILURE_FILE).read_text())
    assert failure["status"] == "failed" and "loss became" in failure["reason"] and failure["step"] >= 5
    info = run_catalog.describe_run(run_dir)
    assert info.status == "failed" and info.resume_command is None

    monkeypatch.setattr(train, "calc_loss_batch", real_loss)
    train.resume_finetune(run_dir)
    assert not (run_dir / runs.FAILURE_FILE).exists() and run_catalog.describe_run(run_dir).status == "finished"


def test_padding_never_changes_the_logits():
    model = tiny_model().eval()
    short = encode_texts(["Ok see you at 6"])[0]
    long = encode_texts([" ".join(SPAM), " ".join(HAM * 2)], max_length=60)
    split = examples.Examples([short, *long], [0, 1, 0])
    alone, mixed = split.batch([0]), split.batch([1, 0, 2])
    assert mixed.input_ids.shape[1] > alone.input_ids.shape[1]
    with torch.no_grad():
        alone = model.classify(alone.input_ids, alone.lengths)
        mixed = model.classify(mixed.input_ids, mixed.lengths)
    torch.testing.assert_close(alone[0], mixed[1], atol=1e-5, rtol=1e-5)
    one = forward.predict_logits(model, examples.Examples([short]), "last-real", precision=FP32, batch_size=1)
    together = forward.predict_logits(model, examples.Examples([*long, short]), "last-real", precision=FP32, batch_size=3)
    torch.testing.assert_close(one[0], together[2], atol=1e-5, rtol=1e-5)


def test_cpu_batches_are_cut_where_padding_costs_more_than_a_call():
    """Cuts of the length-sorted rows minimise ``call_cost + rows * longest`` summed over batches
    (checked against every way to cut a small example, with and without a set of allowed batch
    sizes); without a call cost, batches stay full."""
    import itertools

    from spamtune.data import sorted_batches

    lengths = [3, 40, 5, 38, 4, 90, 6, 41]
    assert sorted_batches(lengths, 4) == [[5, 7, 1, 3], [6, 2, 4, 0]]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def cost(batches, call_cost):
        return sum(call_cost + len(b) * max(lengths[i] for i in b) for b in batches)

    every_cut = [
        [order[a:b] for a, b in zip((0, *ends), (*ends, len(order)))]
        for k in range(len(order)) for ends in itertools.combinations(range(1, len(order)), k)
    ]  # fmt: skip
    cases = [(0, 4, None), (24, 4, None), (24, 8, None), (500, 8, None),
             (24, 8, {1, 2, 4, 8}), (24, 8, {1, 3, 6}), (24, 4, {1, 2, 3, 4})]  # fmt: skip
    for call_cost, batch_size, row_counts in cases:
        allowed = row_counts or set(range(1, batch_size + 1))
        cut = sorted_batches(lengths, batch_size, call_cost, row_counts)
        assert [i for b in cut for i in b] == order and {len(b) for b in cut} <= allowed
        assert cost(cut, call_cost) == min(cost(c, call_cost) for c in every_cut if {len(b) for b in c} <= allowed)
    assert sorted_batches(lengths, 8, 500) == [order]  # a call dearer than any padding: one batch
    assert len(sorted_batches(lengths, 8, 24)) == 3  # 90 | 41 40 38 | 6 5 4 3


def test_gpu_batches_are_capped_in_tokens():
    """``max_tokens`` ends each length-sorted batch before rows times its longest exceeds it;
    a row longer than the cap still gets a batch of its own; every row is in exactly one."""
    from spamtune.data import sorted_batches

    lengths = [3, 40, 5, 38, 4, 90, 6, 41, 200]
    cut = sorted_batches(lengths, 4, max_tokens=100)
    assert cut == [[8], [5], [7, 1], [3, 6], [2, 4, 0]]
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in cut[1:])
    assert sorted_batches(lengths, 4, max_tokens=10**6) == sorted_batches(lengths, 4)


def test_few_shapes_keep_the_answers():
    """``few_shapes`` pads every batch to a multiple of 8 (never past the context length) and
    cuts batches of 1, 2, 3, 4, 6, 8, 12, 16, 24... rows only; no logit changes: padding follows
    the real tokens."""
    assert forward.few_row_counts(32) == {1, 2, 3, 4, 6, 8, 12, 16, 24, 32}
    assert forward.few_row_counts(20) == {1, 2, 3, 4, 6, 8, 12, 16, 20}
    model = tiny_model().eval()
    texts = ["Ok see you at 6", " ".join(SPAM), " ".join(HAM), *(f"note {i} " * (i % 9 + 1) for i in range(40))]
    token_lists = encode_texts(texts, max_length=60)
    shapes = []
    classify = model.classify

    def spy(input_ids, *args, **kwargs):
        shapes.append(tuple(input_ids.shape))
        return classify(input_ids, *args, **kwargs)

    model.classify = spy
    plain = forward.predict_logits(model, examples.Examples(token_lists), "last-real", precision=FP32)
    assert any(w % 8 for _, w in shapes) and any(n not in forward.few_row_counts(64) for n, _ in shapes)
    shapes.clear()
    few = forward.predict_logits(model, examples.Examples(token_lists), "last-real", precision=FP32, few_shapes=True)
    assert shapes and all(w % 8 == 0 and n in forward.few_row_counts(64) for n, w in shapes)
    torch.testing.assert_close(plain, few, atol=1e-5, rtol=1e-5)
    shapes.clear()
    whole = [[7] * (model.cfg.context_length - 3)]  # rounded up, yet never wider than the model reads
    forward.predict_logits(model, examples.Examples(whole), "last-real", precision=FP32, few_shapes=True)
    assert shapes == [(1, model.cfg.context_length)]


def test_last_pooling_pads_to_the_maximum_length():
    """``last`` reads the final padded position: batches are as wide as the book pads them."""
    split = examples.Examples([[1, 2], [3, 4, 5]], [0, 1])
    assert split.batch([0, 1], pad_to=examples.pad_width("last", 10)).input_ids.shape == (2, 10)
    assert split.batch([0, 1], pad_to=examples.pad_width("last-real", 10)).input_ids.shape == (2, 3)


def test_bad_options_are_caught_before_a_folder_is_made(data_root):
    for bad, message in (
        ({"epochs": 0}, "^epochs must be at least 1"),  # the option in words: the core knows no flags
        ({"lr": 0.0}, "^lr must be a positive number"),
        ({"trainable": "last-9-blocks"}, "only 2 blocks"),
        ({"trainable": "last-0-blocks"}, "trains no block: use head"),
        ({"pooling": "max"}, "unknown pooling"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"precision": "fp16"}, "needs a CUDA device"),
        ({"max_length": 100}, "exceeds the model's context length 64"),
        ({"model": "tiny", "weights": "pretrained"}, "no pretrained weights for model 'tiny'"),
    ):
        with pytest.raises(SpamtuneError, match=message):
            train.finetune(tiny_options(data_root, **bad))
    assert not (data_root / "runs").exists()


def test_default_run_folders_never_clobber(data_root):
    first = runs.new_run_dir(data_root / "runs", "tiny-all")
    second = runs.new_run_dir(data_root / "runs", "tiny-all")
    assert first != second and first.is_dir() and second.is_dir()
    (first / "x").write_text("taken")
    with pytest.raises(SpamtuneError, match="already exists and is not empty"):
        runs.claim_run_dir(first)


# --------------------------------------------------------------------------- CLI


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, fragment: str, code: int | None = None):
    assert result.exit_code == (code if code is not None else result.exit_code) and result.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.stderr


def cli_args(root: Path, *extra: str) -> list[str]:
    return ["finetune", "--data-dir", str(root), "--model", str(root / "tiny.json"), "--weights", "random", "--device", "cpu", *extra]


def test_cli_bad_input_is_one_line(data_root, tmp_path):
    assert_one_line_error(invoke(*cli_args(data_root, "--epochs", "0")), "--epochs must be at least 1", 2)
    assert_one_line_error(invoke(*cli_args(data_root, "--batch-size", "0")), "--batch-size must be at least 1", 2)
    lora = ("--trainable", "lora", "--lora-rank", "4")
    assert_one_line_error(invoke(*cli_args(data_root, *lora, "--lora-alpha", "1e30")), "--lora-alpha 1e+30 at rank 4 scales the update", 2)
    assert_one_line_error(invoke(*cli_args(data_root, *lora, "--lora-alpha", "inf")), "--lora-alpha must be a positive number", 2)
    assert_one_line_error(invoke(*cli_args(data_root, "--trainable", "lora", "--lora-rank", "-1")), "--lora-rank must be a positive", 2)
    # Values outside the choices --help lists are usage errors (2), caught while parsing.
    assert_one_line_error(
        invoke(*cli_args(data_root, "--trainable", "some-blocks")), "Invalid value for '--trainable': 'some-blocks'", 2
    )
    assert_one_line_error(invoke("finetune", "--data-dir", str(data_root), "--model", "gpt5"), "Invalid value for '--model': 'gpt5'", 2)
    for option, value in (("--device", "foo"), ("--pooling", "foo"), ("--precision", "fp8"), ("--weights", "some")):
        assert_one_line_error(invoke(*cli_args(data_root, option, value)), f"Invalid value for '{option}': '{value}'", 2)
    empty = tmp_path / "empty"
    (empty).mkdir()
    (empty / "labels.json").write_text(json.dumps({"labels": {"ham": 0, "spam": 1}}))
    (empty / "tiny.json").write_text(json.dumps(TINY_CONFIG))
    assert_one_line_error(invoke(*cli_args(empty)), "split file not found", 1)
    assert not (data_root / "runs").exists() and not (empty / "runs").exists()


def test_cli_trains_interrupts_and_resumes(data_root, monkeypatch):
    ctrl_c_at_step(monkeypatch, 8)
    run_dir = data_root / "runs" / "cli"
    result = invoke(*cli_args(data_root, "--out", str(run_dir)))
    assert result.exit_code == 130 and result.stdout == ""
    assert (
        "interrupted at step 7 (last checkpoint: step 5; the run holds the best weights so far, from step "
        in result.stderr
    )
    assert f"continue with: spamtune finetune --resume --run {run_dir}" in result.stderr
    assert invoke("predict", "--run", str(run_dir), "Do you have time").exit_code == 0

    resumed = invoke("finetune", "--resume", str(run_dir))
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == str(run_dir)
    assert "resuming at step 5" in resumed.stderr and "test accuracy" in resumed.stderr
    assert visible_files(run_dir) == sorted(runs.finished_run_files())


def test_cli_resume_refuses_other_options_and_other_shapes(data_root):
    folders = {}
    for name, cfg in (("a", TINY_CONFIG), ("b", {**TINY_CONFIG, "emb_dim": 48})):
        (data_root / f"{name}.json").write_text(json.dumps(cfg))
        folders[name] = data_root / "runs" / name
        with pytest.raises(events.TrainingInterrupted):
            train.finetune(
                tiny_options(data_root, model=str(data_root / f"{name}.json")),
                folders[name],
                on_event=lambda e: (_ for _ in ()).throw(KeyboardInterrupt) if isinstance(e, events.StepDone) else None,
            )
    assert_one_line_error(invoke("finetune", "--resume", str(folders["a"]), "--epochs", "9"), "--epochs 9 differs from its 2", 2)
    state = runs.RESUME_DIR + "/" + runs.RESUME_FILE
    (folders["a"] / state).write_bytes((folders["b"] / state).read_bytes())
    assert_one_line_error(invoke("finetune", "--resume", str(folders["a"])), f'"model" is "{data_root / "a.json"}" but the run was checkpointed with', 1)
    # A checkpoint that keeps no settings (as before they were kept): its shapes are checked.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(folders["b"] / state), framework="pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if k != "settings"}
    save_file(load_file(str(folders["b"] / state)), str(folders["a"] / state), metadata=metadata)
    assert_one_line_error(invoke("finetune", "--resume", str(folders["a"])), "checkpoint of another shape", 1)
    assert_one_line_error(invoke("finetune", "--resume", str(data_root / "nowhere")), "run folder not found", 1)


@pytest.mark.parametrize(
    "change, refusal",
    [
        (lambda t, loop: t.update({"optimizer.x.exp_avg": t.pop("optimizer.0.exp_avg")}), "'optimizer.x.exp_avg' is not the optimizer state of one of"),
        (lambda t, loop: t.update({"optimizer.999.exp_avg": t.pop("optimizer.0.exp_avg")}), "'optimizer.999.exp_avg' is not the optimizer state"),
        (lambda t, loop: t.pop("rng.torch"), "no random number generator state"),
        (lambda t, loop: t.update({"rng.torch": torch.zeros(3)}), "no random number generator state"),
        (lambda t, loop: loop.clear(), "its loop position {} does not say at which step"),
        (lambda t, loop: loop.update({"step": "5"}), "does not say at which step"),
        # The rest of the loop position: a bare TypeError or KeyError, once at the very end.
        (lambda t, loop: loop.update({"epoch": "x"}), 'its loop position\'s "epoch" is "x", not a whole number'),
        (lambda t, loop: loop.update({"stopped_early": "no"}), '"stopped_early" is "no", not true or false'),
        (lambda t, loop: loop.update({"elapsed_s": None}), '"elapsed_s" is null, not a number of seconds'),
        (lambda t, loop: loop.update({"best": {"step": 3}}), 'its loop position\'s "best" is {"step": 3}, not an evaluation record'),
        (lambda t, loop: loop["best"].pop("train_loss"), '"best" is {"step": 3'),
    ],
)
def test_a_damaged_resume_state_is_one_line(data_root, change, refusal):
    run_dir = data_root / "runs" / "cut"
    with pytest.raises(events.TrainingInterrupted):
        train.finetune(tiny_options(data_root, eval_every=3), run_dir, on_event=lambda e: ctrl_c_if(isinstance(e, events.StepDone) and e.step == 5))
    resume_file = run_dir / runs.RESUME_DIR / runs.RESUME_FILE
    with safe_open(str(resume_file), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    loop = json.loads(metadata["loop"])
    change(tensors, loop)
    save_file(tensors, str(resume_file), {**metadata, "loop": json.dumps(loop)})
    result = invoke("finetune", "--resume", str(run_dir))
    assert_one_line_error(result, refusal, 1)
    assert f"cannot read the resume state {resume_file}: " in result.stderr


# --------------------------------------------------------------------------- exact shortcuts


def run_pair(root: Path, tmp: Path, **overrides) -> tuple[dict, dict, list[dict], list[dict]]:
    """The same run with and without the shortcuts: summaries and metrics lines of both."""
    fast = train.finetune(tiny_options(root, **overrides), tmp / "fast")
    plain = train.finetune(tiny_options(root, shortcuts=False, **overrides), tmp / "plain")
    return fast, plain, runs.read_metrics(tmp / "fast"), runs.read_metrics(tmp / "plain")


def assert_same_curves(fast_records: list[dict], plain_records: list[dict]) -> None:
    assert len(fast_records) == len(plain_records)
    for f, p in zip(fast_records, plain_records):
        assert (f["train_accuracy"], f["validation_accuracy"]) == (p["train_accuracy"], p["validation_accuracy"])
        assert f["train_loss"] == pytest.approx(p["train_loss"], abs=1e-4)
        assert f["validation_loss"] == pytest.approx(p["validation_loss"], abs=1e-4)


@pytest.mark.parametrize("trainable", ["last-block", "head"])
def test_shortcuts_change_nothing_but_the_speed(data_root, tmp_path, trainable):
    fast, plain, fast_records, plain_records = run_pair(data_root, tmp_path, trainable=trainable, epochs=3)
    assert fast["prefix_cache"]["splits"] == ["train", "validation", "test"]
    assert fast["prefix_cache"]["blocks"] == (1 if trainable == "last-block" else 2)
    assert fast["prefix_cache"]["bytes"] > 0 and plain["prefix_cache"]["bytes"] == 0
    assert_same_curves(fast_records, plain_records)
    assert fast["test_accuracy"] == plain["test_accuracy"]
    assert fast["test_loss"] == pytest.approx(plain["test_loss"], abs=1e-4)


def test_prefix_cache_respects_its_memory_budget(data_root):
    options = tiny_options(data_root)
    model = train.build_model(GPTConfig(**TINY_CONFIG), options, LAST_BLOCK, 2)
    data = examples.load_training_data(data_root, 64, None)
    train_bytes = sum(len(t) for t in {tuple(t) for t in data.train.tokens}) * TINY_CONFIG["emb_dim"] * 4
    report = prefix_cache.attach_prefix_caches(model, data, LAST_BLOCK, "last-real", FP32, budget_bytes=train_bytes)
    assert report.splits == ("train",) and data.validation.cache is None and report.nbytes == train_bytes
    data = examples.load_training_data(data_root, 64, None)
    report = prefix_cache.attach_prefix_caches(model, data, LAST_BLOCK, "last-real", FP32, budget_bytes=train_bytes - 1)
    assert report.splits == () and data.train.cache is None and "budget" in report.skipped


def test_last_pooling_trains_without_the_cache(data_root, tmp_path):
    summary = train.finetune(tiny_options(data_root, pooling="last"), tmp_path / "run")
    assert summary["prefix_cache"]["splits"] == []


def test_shortcuts_give_identical_accuracies_on_the_real_split(tmp_path, sms_file):
    """Same seed, fp32, tiny model, the book's balanced split: the same curve with and without."""
    root = tmp_path / "data"
    result = CliRunner().invoke(app, ["prepare", "--input", str(sms_file), "--data-dir", str(root)])
    assert result.exit_code == 0, result.output
    (root / "tiny.json").write_text(json.dumps({"context_length": 128, "emb_dim": 64, "n_layers": 3, "n_heads": 4}))
    _, _, fast_records, plain_records = run_pair(
        root, tmp_path, trainable="last-2-blocks", epochs=2, lr=5e-4, batch_size=16, precision="fp32"
    )
    assert_same_curves(fast_records, plain_records)


# --------------------------------------------------------------------------- faults found by trying to break it


def interrupted_run(data_root: Path, name: str, at_step: int = 3) -> Path:
    """A run stopped by Ctrl-C at ``at_step``: resumable, its first evaluation (step 5) not reached."""
    run_dir = data_root / "runs" / name

    def ctrl_c(event):
        if isinstance(event, events.StepDone) and event.step == at_step:
            raise KeyboardInterrupt

    with pytest.raises(events.TrainingInterrupted):
        train.finetune(tiny_options(data_root, epochs=1), run_dir, on_event=ctrl_c)
    return run_dir


@pytest.mark.parametrize(
    "failure",
    [
        lambda: OSError(errno.ENOSPC, "No space left on device"),
        # What safetensors itself raises when the disk fills under it.
        lambda: SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
)
def test_a_full_disk_at_a_checkpoint_says_so_and_keeps_the_last_one(data_root, monkeypatch, failure):
    real_save = checkpoint.save_file
    saves = []

    def disk_fills_after_the_first_checkpoint(tensors, path, metadata=None):
        saves.append(path)
        if len(saves) == 1:
            return real_save(tensors, path, metadata=metadata)
        Path(path).write_bytes(b"half a checkpoint")  # what a write cut short leaves behind
        raise failure()

    monkeypatch.setattr(checkpoint, "save_file", disk_fills_after_the_first_checkpoint)
    run_dir = data_root / "runs" / "full"
    state = run_dir / runs.RESUME_DIR / runs.RESUME_FILE
    result = invoke(*cli_args(data_root, "--out", str(run_dir), "--epochs", "1"))
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the progress lines: the error, one line
    assert last.startswith(f"Error: disk full: {state}; the last checkpoint (step 0) is intact")
    assert last.endswith(f"continue with: spamtune finetune --resume --run {run_dir}")
    assert len(saves) == 2 and not [p for p in run_dir.rglob("*") if p.name.endswith(".part")]
    monkeypatch.undo()
    # The step-0 checkpoint is whole: the run resumes from it and finishes.
    steps = []
    summary = train.resume_finetune(run_dir, on_event=lambda e: steps.append(e.step) if isinstance(e, events.StepDone) else None)
    assert steps[0] == 1 and summary["steps"] == 5


def test_a_full_disk_at_the_first_checkpoint_leaves_a_run_its_resume_command_continues(data_root, monkeypatch):
    """Written behind the steps, the first checkpoint's failure came out at the second, once
    metrics.jsonl held an evaluation: the error offered --resume, which then refused a run with
    evaluations and no resume state."""
    real_save = checkpoint.save_file
    saves = []

    def disk_full_at_the_first_checkpoint(tensors, path, metadata=None):
        saves.append(path)
        if len(saves) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", disk_full_at_the_first_checkpoint)
    run_dir = data_root / "runs" / "full-at-once"
    result = invoke(*cli_args(data_root, "--out", str(run_dir), "--epochs", "1", "--eval-every", "2"))
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(f"continue with: spamtune finetune --resume --run {run_dir}")
    assert len(saves) == 1 and not (run_dir / runs.METRICS_FILE).exists()  # stopped before its first evaluation was kept
    monkeypatch.undo()
    resumed = invoke("finetune", "--resume", "--run", str(run_dir))
    assert resumed.exit_code == 0, resumed.stderr
    assert runs.is_finished(run_dir)


def test_a_write_cut_short_leaves_nothing_after_resume(data_root):
    """A kill during the final model write (or a checkpoint) leaves a temporary file; resuming
    the run removes it, so the finished folder holds exactly its files."""
    run_dir = interrupted_run(data_root, "killed")
    (run_dir / ".model.safetensors.0badc0de.part").write_bytes(b"half a model")
    (run_dir / runs.RESUME_DIR / ".state.safetensors.0badc0de.part").write_bytes(b"half a state")
    train.resume_finetune(run_dir)
    assert visible_files(run_dir) == sorted(runs.finished_run_files())


def test_a_resume_without_its_resume_state_is_refused_not_started_again(data_root):
    """A deleted resume state made --resume train from step 0 again, over the run's metrics."""
    run_dir = data_root / "runs" / "lost"
    with pytest.raises(events.TrainingInterrupted):
        train.finetune(tiny_options(data_root, eval_every=3), run_dir, on_event=lambda e: ctrl_c_if(isinstance(e, events.StepDone) and e.step == 8))
    runs.resume_file(run_dir).unlink()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    result = invoke("finetune", "--resume", str(run_dir))
    assert_one_line_error(result, f"cannot resume {run_dir}: its resume state {runs.resume_file(run_dir)} is missing", 1)
    way_out = f"spamtune finetune --config {run_dir} --data-dir {data_root.resolve()}"
    assert result.stderr.rstrip().endswith(f"start over in a new run with its settings: {way_out}")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    again = invoke(*way_out.split()[1:], "--run", str(data_root / "runs" / "again"))
    assert again.exit_code == 0, again.stderr
    runs.resume_file(run_dir).mkdir()  # something else in its place
    assert_one_line_error(invoke("finetune", "--resume", str(run_dir)), f"its resume state {runs.resume_file(run_dir)} is not a file", 1)
    runs.resume_file(run_dir).rmdir()
    # A run killed before it took a step (no evaluation, no weights) has nothing to lose: it starts.
    for name in (runs.METRICS_FILE, runs.DELTA_FILE, runs.CONFIG_FILE):
        (run_dir / name).unlink()
    assert invoke("finetune", "--resume", str(run_dir)).exit_code == 0 and runs.is_finished(run_dir)


def test_a_resume_whose_metrics_lost_evaluations_is_refused(data_root, tmp_path):
    """A deleted metrics.jsonl was resumed from in silence: the finished run's metrics, curves
    and plot lacked its early epochs. Every way the file can lose an evaluation the resume state
    has passed is one line naming it, and the run is left as it was, to resume once it is back."""
    run_dir = data_root / "runs" / "lost-metrics"
    # 7 batches of 6 messages, 2 a step: 4 steps an epoch (the last one batch), evaluated at 3, 4, 6 and 8.
    options = tiny_options(data_root, eval_every=3, batch_size=6, grad_accum=2)
    with pytest.raises(events.TrainingInterrupted):
        train.finetune(options, run_dir, on_event=lambda e: ctrl_c_if(isinstance(e, events.StepDone) and e.step == 7))
    metrics = run_dir / runs.METRICS_FILE
    kept = metrics.read_bytes()
    assert [r["step"] for r in runs.read_metrics(run_dir)] == [3, 4, 6]  # the resume state stands at step 6
    elsewhere = tmp_path / "metrics-copy.jsonl"
    elsewhere.write_bytes(kept)
    way_out = f"start over in a new run with its settings: spamtune finetune --config {run_dir} --data-dir {data_root.resolve()}"
    refused = f"Error: cannot resume {run_dir}: its metrics {metrics} "
    damages = {
        "deleted": (metrics.unlink, f"{refused}is missing, and with it the 3 evaluations up to step 6, where its resume state stands; "),
        "its last epoch gone": (lambda: metrics.write_bytes(b"".join(kept.splitlines(keepends=True)[:2])), f"{refused}lacks 1 of the 3 evaluations up to step 6, where its resume state stands (step 6); "),
        "one in the middle gone": (lambda: metrics.write_bytes(b"".join(kept.splitlines(keepends=True)[::2])), f"{refused}lacks 1 of the 3 evaluations up to step 6, where its resume state stands (step 4); "),
        "a link to a copy": (lambda: (metrics.unlink(), metrics.symlink_to(elsewhere)), f"{refused}is a symbolic link; "),
        "a folder": (lambda: (metrics.unlink(), metrics.mkdir()), f"{refused}is not a file; "),
        # A record without a figure the curves are drawn from: the resume trained to the end, then
        # stopped drawing them with an unexpected KeyError.
        "a record without its losses": (
            lambda: metrics.write_bytes(kept.replace(b'"train_loss"', b'"train_lost"', 1)),
            f"{refused}hold a record of step 3 with no number for train_loss; ",
        ),
        # A line cut short is no record: named as it always was ("fix or remove that line").
        "cut mid-line": (lambda: metrics.write_bytes(kept[:-20]), f"Error: {metrics}, line 3, is not an evaluation record"),
    }
    for name, (damage, refusal) in damages.items():
        damage()
        before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink()}
        result = invoke("finetune", "--resume", str(run_dir))
        assert_one_line_error(result, refusal, 1)
        assert result.stderr.startswith(refusal), name
        assert result.stderr.rstrip().endswith(way_out) or not refusal.startswith(refused), name
        assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink()} == before, name
        if metrics.is_dir() and not metrics.is_symlink():
            metrics.rmdir()
        metrics.unlink(missing_ok=True)
        metrics.write_bytes(kept)
    resumed = invoke("finetune", "--resume", str(run_dir))
    assert resumed.exit_code == 0, resumed.stderr
    assert [r["step"] for r in runs.read_metrics(run_dir)] == [3, 4, 6, 8]  # the schedule the check expects


def test_resuming_a_folder_that_is_no_run_leaves_nothing_in_it(tmp_path):
    """The refusal took the run's lock first, leaving a .lock file in the user's folder."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"jpeg")
    assert_one_line_error(invoke("finetune", "--resume", "--run", str(folder)), f"run hyperparameters not found: {folder / runs.HPARAMS_FILE}", 1)
    assert sorted(p.name for p in folder.iterdir()) == ["cat.jpg"]


def test_a_run_trains_in_one_process_at_a_time(data_root):
    run_dir = interrupted_run(data_root, "twice")
    with runs.lock_run_dir(run_dir):  # as a second `finetune --resume` of the same run holds it
        result = invoke("finetune", "--resume", str(run_dir))
        assert_one_line_error(result, f"run is in use by another process: {run_dir}", 1)
        assert not (run_dir / runs.SUMMARY_FILE).exists()
    assert invoke("finetune", "--resume", str(run_dir)).exit_code == 0  # the lock goes with its holder
    assert_one_line_error(invoke("finetune", "--resume", str(run_dir)), "is a finished run", 1)
    assert visible_files(run_dir) == sorted(runs.finished_run_files())  # no lock file left in a finished run


def test_paths_with_brackets_are_printed_as_they_are(data_root, monkeypatch):
    """Rich would read ``[/x]`` in a path as a closing tag (and fail) and ``[bold]`` as a style
    (and drop it): user text is never markup."""
    run_dir = data_root / "runs" / "[bold]b" / "weird[/x]run"
    real_step = train.optimizer_step
    calls = []

    def ctrl_c_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train, "optimizer_step", ctrl_c_at_step_3)
    stopped = invoke(*cli_args(data_root, "--out", str(run_dir)))
    assert stopped.exit_code == 130, stopped.stderr
    # The resume command is quoted for the shell: brackets are glob characters there.
    assert f"run folder: {run_dir}\n" in stopped.stderr and f"--resume --run '{run_dir}'" in stopped.stderr
    resumed = invoke("finetune", "--resume", str(run_dir))
    assert resumed.exit_code == 0, resumed.stderr
    assert f"run folder: {run_dir}\n" in resumed.stderr and resumed.stdout.splitlines()[-1] == str(run_dir)


@pytest.mark.skipif(shutil.which("bash") is None, reason="the resume command is pasted into bash")
def test_the_resume_command_of_a_run_named_with_a_newline_pastes_back_as_that_run(data_root, monkeypatch):
    """Shown on one line, the newline of the shell-quoted path became the two characters \\n,
    so the command pasted from the warning named a folder that did not exist."""
    real_step = train.optimizer_step

    def ctrl_c_at_step_2(*args, **kwargs):
        if ctrl_c_at_step_2.calls == 1:
            raise KeyboardInterrupt
        ctrl_c_at_step_2.calls += 1
        return real_step(*args, **kwargs)

    ctrl_c_at_step_2.calls = 0
    monkeypatch.setattr(train, "optimizer_step", ctrl_c_at_step_2)
    run_dir = data_root / "runs" / "line\nbreak"
    stopped = invoke(*cli_args(data_root, "--run", str(run_dir)))
    assert stopped.exit_code == 130, stopped.stderr
    warning = stopped.stderr.splitlines()[-1]
    command = warning.split("continue with: ", 1)[1]
    words = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + command], capture_output=True, text=True, check=True).stdout
    assert words.split("\0")[:-1] == ["spamtune", "finetune", "--resume", "--run", str(run_dir)]


def test_the_cli_takes_its_defaults_from_the_options_dataclass(data_root, monkeypatch):
    """Every finetune flag's default is FinetuneOptions' own: nothing is written twice."""
    given = []

    def capture(opts, out, on_event):
        given.append(opts)
        raise SpamtuneError("options captured")

    monkeypatch.setattr(train, "finetune", capture)
    assert_one_line_error(invoke("finetune", "--data-dir", str(data_root)), "options captured", 1)
    flags = ("--no-shortcuts", "--batch-size", "3", "--max-length", "9")
    assert_one_line_error(invoke("finetune", "--data-dir", str(data_root), *flags), "options captured", 1)
    assert given == [
        options.FinetuneOptions(data_dir=str(data_root)),
        options.FinetuneOptions(data_dir=str(data_root), shortcuts=False, batch_size=3, max_length=9),
    ]


# Stopped while the base is drawn, or while the first checkpoint is taken (the interrupt then
# comes inside training's own handling, before any resume state exists).
@pytest.mark.parametrize("stopped_in", ["prepare_base", "resume_writer"])
def test_ctrl_c_before_the_first_checkpoint_leaves_no_run_folder(data_root, monkeypatch, stopped_in):
    """Nothing to resume, so nothing that `runs` would list as failed and no resume hint."""

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, stopped_in, ctrl_c)
    out = data_root / "runs" / "early"
    with pytest.raises(KeyboardInterrupt):
        train.finetune(tiny_options(data_root), out)
    assert not out.exists()
    result = invoke(*cli_args(data_root, "--out", str(out)))
    assert result.exit_code == 130 and result.stdout == ""
    assert "continue with" not in result.stderr and result.stderr.endswith("Error: interrupted\n")
    assert not out.exists()


def test_ctrl_c_just_after_a_run_finished_keeps_the_run(tmp_path, monkeypatch):
    """Past its summary a run has no resume state either, like one stopped before its first
    checkpoint: its hparams.json must not be taken for an unstarted run's and removed."""
    root = write_tiny_data(tmp_path / "data")
    real_finish = train.finish

    def finish_then_ctrl_c(*args, **kwargs):
        real_finish(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "finish", finish_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train.finetune(tiny_options(root, epochs=1), tmp_path / "run")
    assert runs.is_finished(tmp_path / "run") and (tmp_path / "run" / runs.HPARAMS_FILE).is_file()


def test_a_resume_on_other_base_weights_than_the_run_started_on_is_refused(data_root, monkeypatch):
    """The resume state holds only what trains: the frozen weights come from the base again. A
    GPT-2 file downloaded or imported anew between the sessions made the run half one model,
    half another, silently; the base the run named when it started is compared instead."""
    hf_file = write_hf_gpt2(data_root / "hf" / "model.safetensors", emb_dim=32, context=64, buffers=True)
    monkeypatch.setattr(base_model, "pretrained_weights_file", lambda cfg, spec, root: hf_file)
    monkeypatch.setattr(options, "pretrained_weights_file", lambda cfg, spec, root: hf_file)
    run_dir = data_root / "runs" / "pre"
    with pytest.raises(events.TrainingInterrupted):
        train.finetune(tiny_options(data_root, weights="pretrained", epochs=1), run_dir, on_event=lambda e: ctrl_c_if(isinstance(e, events.StepDone) and e.step == 3))
    started_on = json.loads((run_dir / runs.BASE_REF_FILE).read_text())["base"]["sha256"]
    write_hf_gpt2(hf_file, emb_dim=32, context=64, buffers=True, seed=1)  # other weights, same shape
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(SpamtuneError, match=f"{run_dir} started on base {started_on[:12]}.*its settings now give base"):
        train.resume_finetune(run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # base.json too
    write_hf_gpt2(hf_file, emb_dim=32, context=64, buffers=True)  # the weights it started on, back
    assert train.resume_finetune(run_dir)["steps"] == 5
