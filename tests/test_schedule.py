"""Learning-rate schedules and gradient clipping."""

import json
import math

import pytest
import torch

from spamtune.errors import OptionError
from spamtune.schedule import check_schedule_options, clip_gradients, lr_multiplier, make_scheduler


def test_constant_without_warmup_is_the_books_fixed_rate():
    assert [lr_multiplier(s, "constant", 0, 10) for s in range(12)] == [1.0] * 12


def test_warmup_rises_linearly_then_constant():
    assert [lr_multiplier(s, "constant", 3, 10) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decays_from_the_peak_after_warmup_to_zero_at_the_end(schedule):
    values = [lr_multiplier(s, schedule, 2, 10) for s in range(12)]
    assert values[:3] == [1 / 3, 2 / 3, 1.0]
    assert all(a > b for a, b in zip(values[2:10], values[3:10]))  # strictly decreasing over the decay
    assert values[10] == pytest.approx(0.0, abs=1e-12) and values[11] == values[10]


def test_cosine_and_linear_midpoints():
    # 8 decay steps after 2 warmup steps: the midpoint is step 6.
    assert lr_multiplier(6, "cosine", 2, 10) == pytest.approx(0.5)
    assert lr_multiplier(6, "linear", 2, 10) == pytest.approx(0.5)
    assert lr_multiplier(4, "cosine", 2, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier(4, "linear", 2, 10) == pytest.approx(0.75)


def test_lambda_lr_applies_the_multiplier_to_each_update():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = make_scheduler(optimizer, "linear", warmup_steps=1, total_steps=5)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.05, 0.1, 0.075, 0.05, 0.025])
    # The parameter moved by exactly the sum of the rates used.
    assert param.item() == pytest.approx(-sum(seen))


def test_a_recreated_scheduler_continues_where_one_left_off():
    def rates(resume_after):
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([param], lr=1.0)
        scheduler = make_scheduler(optimizer, "cosine", 2, 8)
        out = []
        for step in range(8):
            if step == resume_after:
                optimizer = torch.optim.SGD([param], lr=1.0)
                scheduler = make_scheduler(optimizer, "cosine", 2, 8, start_step=step)
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    assert rates(resume_after=5) == pytest.approx(rates(resume_after=-1))


def test_clipping_scales_the_joint_norm_down_and_reports_it():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert clip_gradients([a, b], 1.0) == pytest.approx(5.0)
    assert a.grad.tolist() == pytest.approx([0.6, 0.0], rel=1e-5) and b.grad.tolist() == pytest.approx([0.8], rel=1e-5)
    # Under the limit nothing changes; off (None) touches nothing either.
    assert clip_gradients([a, b], 10.0) == pytest.approx(1.0, rel=1e-5)
    assert a.grad.tolist() == pytest.approx([0.6, 0.0], rel=1e-5)
    a.grad = torch.tensor([30.0, 40.0])
    assert clip_gradients([a, b], None) is None and a.grad.tolist() == [30.0, 40.0]


@pytest.mark.parametrize(
    "args, option",
    [(("step", 0, None), "schedule"), (("cosine", -1, None), "warmup_steps"), (("cosine", 0, 0.0), "clip_grad_norm"),
     (("linear", 0, float("inf")), "clip_grad_norm")],
)
def test_bad_options_are_usage_errors_naming_the_option(args, option):
    """Named as an option, which the command line shows as its flag and a run's hparams.json as its field."""
    with pytest.raises(OptionError) as refused:
        check_schedule_options(*args)
    assert refused.value.option == option and refused.value.exit_code == 2  # a usage error


@pytest.mark.parametrize(("warmup", "warned"), [(10, True), (9, False)])
def test_finetune_warns_when_warmup_lasts_the_whole_run(tmp_path, warmup, warned):
    """The tiny data has 40 training messages: 10 steps of 4 in one epoch. A warm-up of 10
    steps never reaches the learning rate; one of 9 reaches it at the last step."""
    from helpers import write_tiny_data
    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path)
    args = ["finetune", "--model", str(root / "tiny.json"), "--weights", "random", "--epochs", "1", "--batch-size", "4"]
    args += ["--schedule", "cosine", "--warmup-steps", str(warmup), "--device", "cpu", "--data-dir", str(root)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.stderr
    message = f"--warmup-steps {warmup} is not shorter than the run's 10 steps: the learning rate never reaches --lr"
    assert (message in result.stderr) is warned
    assert lr_multiplier(9, "cosine", warmup, 10) == (10 / 11 if warned else 1.0)


@pytest.mark.parametrize("trainable", ["last-block", "lora"])
def test_lora_options_without_lora_are_a_usage_error(tmp_path, trainable):
    from helpers import write_tiny_data
    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path)
    args = ["finetune", "--model", str(root / "tiny.json"), "--weights", "random", "--epochs", "1", "--device", "cpu"]
    args += ["--trainable", trainable, "--lora-rank", "4", "--lora-blocks", "1", "--data-dir", str(root), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    if trainable == "lora":
        assert result.exit_code == 0, result.stderr
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["trainable"] == "lora"
        return
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --lora-rank, --lora-blocks apply only with --trainable lora, and this run trains last-block: "
        "add --trainable lora, or leave them out"
    )
    assert not (tmp_path / "run").exists()


def test_resuming_a_lora_run_takes_its_own_lora_options_again_without_a_word(tmp_path, monkeypatch):
    from helpers import ctrl_c_at_step, write_tiny_data
    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path)
    run = str(tmp_path / "run")
    args = ["--model", str(root / "tiny.json"), "--weights", "random", "--epochs", "1", "--device", "cpu", "--data-dir", str(root)]
    lora = ["--trainable", "lora", "--lora-rank", "4", "--lora-blocks", "1"]
    with monkeypatch.context() as patched:
        ctrl_c_at_step(patched, 3)
        assert CliRunner().invoke(app, ["finetune", *args, *lora, "--run", run]).exit_code == 130
    changed = CliRunner().invoke(app, ["finetune", "--resume", "--run", run, "--lora-rank", "8", "--data-dir", str(root)])
    assert changed.exit_code == 2
    assert changed.stderr.count("\n") == 1 and changed.stderr.startswith("Error: a resumed run keeps the options it started with")
    resumed = CliRunner().invoke(app, ["finetune", "--resume", "--run", run, "--lora-rank", "4", "--lora-blocks", "1", "--data-dir", str(root)])
    assert resumed.exit_code == 0, resumed.stderr
    assert "WARNING" not in resumed.stderr and "Error" not in resumed.stderr


def test_a_lora_rank_beyond_the_models_width_is_a_usage_error_before_any_folder(tmp_path):
    from helpers import write_tiny_data
    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path)
    args = ["finetune", "--model", str(root / "tiny.json"), "--weights", "random", "--trainable", "lora", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--lora-rank", "99999999999999999999", "--data-dir", str(root), "--run", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --lora-rank must be at most the model's width") and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_each_evaluation_records_the_learning_rate_its_step_took(tmp_path, schedule):
    """The tiny data: 10 steps of 4 messages an epoch, evaluated every 3 steps and at the end."""
    from helpers import write_tiny_data

    from spamtune import runs, train
    from spamtune.options import FinetuneOptions
    from spamtune.schedule import lr_multiplier

    root = write_tiny_data(tmp_path)
    options = FinetuneOptions(
        model=str(root / "tiny.json"), weights="random", epochs=2, batch_size=4, lr=1e-3, schedule=schedule,
        warmup_steps=4, eval_every=3, device="cpu", data_dir=str(root),
    )  # fmt: skip
    train.finetune(options, tmp_path / "run")
    records = runs.read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [3, 6, 9, 10, 12, 15, 18, 20]
    for record in records:
        assert record["lr"] == pytest.approx(1e-3 * lr_multiplier(record["step"] - 1, schedule, 4, 20), rel=1e-12)
    assert records[0]["lr"] < 1e-3  # still warming up at step 3


def test_resuming_a_run_that_trains_no_lora_refuses_lora_options_and_shows_values_as_typed(tmp_path, monkeypatch):
    from helpers import ctrl_c_at_step, write_tiny_data
    from typer.testing import CliRunner

    from spamtune.cli import app

    root = write_tiny_data(tmp_path)
    run = str(tmp_path / "run")
    args = ["--model", str(root / "tiny.json"), "--weights", "random", "--epochs", "1", "--device", "cpu", "--data-dir", str(root)]
    with monkeypatch.context() as patched:
        ctrl_c_at_step(patched, 3)
        assert CliRunner().invoke(app, ["finetune", *args, "--run", run]).exit_code == 130
    again = ["finetune", "--resume", "--run", run, "--data-dir", str(root)]
    lora = CliRunner().invoke(app, [*again, "--lora-rank", "16"])
    assert lora.exit_code == 2
    assert lora.stderr == f"Error: --lora-rank applies only with --trainable lora, and {run} trains last-block\n"
    patience = CliRunner().invoke(app, [*again, "--patience", "2"])
    assert patience.exit_code == 2
    assert patience.stderr.startswith("Error: a resumed run keeps the options it started with: --patience 2 differs from its none in ")
