"""Calibration inside runs: class weights, the natural-mix split, calibration.json after
training, and the run's temperature and threshold in SpamClassifier, predict and evaluate."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_options, tiny_split, write_tiny_data
from typer.testing import CliRunner

from spamtune import calibration as cal
from spamtune import train
from spamtune.cli import app
from spamtune.errors import SpamtuneUsageError
from spamtune.forward import class_weight_tensor
from spamtune.infer import SpamClassifier
from spamtune.labelled_texts import LabelledTexts
from spamtune.prepare import PrepareOptions, prepare_splits


def test_balanced_class_weights_are_inverse_frequencies():
    assert class_weight_tensor("none", [0, 0, 1], 2) is None
    weights = class_weight_tensor("balanced", [0, 0, 0, 1], 2)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])
    # Weighted this way, each class contributes half of the loss of a batch of the whole split.
    assert (weights[0] * 3).item() == pytest.approx((weights[1] * 1).item())
    assert class_weight_tensor("balanced", [0, 0], 3).tolist() == pytest.approx([1 / 3, 1.0, 1.0])  # 2 / (3 * 2); absent: 1


def test_balance_none_keeps_every_row_with_the_natural_mix_in_each_split(tmp_path):
    texts = [f"ham {i}" for i in range(900)] + [f"spam {i}" for i in range(100)]
    labels = ["ham"] * 900 + ["spam"] * 100
    source = LabelledTexts(tmp_path / "x.tsv", "0", "tsv", texts, labels, {"ham": 0, "spam": 1})
    prepared = prepare_splits(source, PrepareOptions(balance="none"))
    counts = prepared.counts()
    assert counts == {"train": {"ham": 630, "spam": 70}, "validation": {"ham": 90, "spam": 10}, "test": {"ham": 180, "spam": 20}}


@pytest.fixture(scope="module")
def weighted_run(tmp_path_factory):
    root = write_tiny_data(tmp_path_factory.mktemp("data"))
    summary = train.finetune(tiny_options(root, class_weights="balanced", epochs=1), root / "runs" / "weighted")
    return root, root / "runs" / "weighted", summary


def test_training_writes_a_calibration_and_records_class_weights(weighted_run):
    root, run, summary = weighted_run
    stored = cal.read_calibration(run)
    assert stored is not None and stored.rule == "threshold" and stored.threshold == 0.5
    assert summary["calibration"]["temperature"] == stored.temperature
    assert cal.MIN_TEMPERATURE <= stored.temperature <= cal.MAX_TEMPERATURE
    assert json.loads((run / "hparams.json").read_text())["class_weights"] == "balanced"


def test_classifier_uses_the_runs_temperature_and_threshold(weighted_run):
    root, run, _ = weighted_run
    kept = SpamClassifier.load(run, device="cpu", precision="fp32")  # training's calibration keeps 0.5
    assert kept.describe_decision() == f"threshold 0.5 (temperature {kept.temperature:.3g} fitted on validation)"
    cal.write_calibration(run, cal.Calibration(2.0, 0.3, "max-ham-loss", 0.1, {}))
    clf = SpamClassifier.load(run, device="cpu", precision="fp32")
    raw = SpamClassifier.load(run, device="cpu", precision="fp32", calibration=False)
    assert (clf.threshold, clf.temperature, raw.threshold, raw.temperature) == (0.3, 2.0, 0.5, 1.0)
    assert "max-ham-loss 10.00%" in clf.describe_threshold()
    texts = ["WINNER!! free prize", "lunch tomorrow?"]
    logits = torch.log(raw.predict_proba(texts))
    assert torch.allclose(clf.predict_proba(texts), torch.softmax(logits / 2.0, dim=1), atol=1e-5)
    assert SpamClassifier.load(run, device="cpu", threshold=0.9).threshold == 0.9  # given wins
    for p in clf.predict(texts):
        assert p.label == ("spam" if p.probability >= 0.3 else "ham")


def test_explain_from_the_api_and_predict(weighted_run):
    root, run, _ = weighted_run
    clf = SpamClassifier.load(run, device="cpu", precision="fp32")
    text = "Free 🎉 entry, text WIN to 80086 [bold]now[/bold]"
    explanation = clf.explain(text)
    assert explanation.p_spam == pytest.approx(clf.predict(text).probability, abs=1e-4)
    assert [text[w.start : w.end] for w in explanation.words] == text.split()

    result = CliRunner().invoke(app, ["predict", "--run", str(run), "--format", "jsonl", "--explain", "--device", "cpu", text, "ok"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    for span in lines[0]["explanation"]:
        assert set(span) == {"text", "start", "end", "score"} and text[span["start"] : span["end"]] == span["text"]
    # The text format marks spans without ever reading the message as markup.
    shown = CliRunner().invoke(app, ["predict", "--run", str(run), "--format", "text", "--explain", "--device", "cpu", text])
    assert "[bold]" in shown.stdout or "[+[bold]now[/bold]]" in shown.stdout or "[-[bold]now[/bold]]" in shown.stdout
    assert shown.stdout.count("[+") + shown.stdout.count("[-") >= 1
    refused = CliRunner().invoke(app, ["predict", "--run", str(run), "--format", "label", "--explain", "x"])
    assert refused.exit_code == 2 and "--explain" in refused.stderr


def test_evaluate_reports_the_operating_point_and_draws_the_plots(weighted_run, tmp_path):
    root, run, _ = weighted_run
    cal.calibrate_run(run, rule="max-ham-loss", target=0.2, device="cpu")
    result = CliRunner().invoke(app, ["evaluate", str(run), "--format", "json", "--device", "cpu", "--plots", str(tmp_path)])
    table = CliRunner().invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert table.exit_code == 0 and "ham marked spam" in table.stdout and "ECE (15 bins)" in table.stderr
    assert {"roc.svg", "pr.svg", "calibration.svg"} <= {p.name for p in run.iterdir()}  # by default into the run
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for field in ("threshold", "false_positive_rate", "spam_recall", "roc_auc", "pr_auc", "ece"):
        assert isinstance(report[field], float), field
    assert report["threshold"] == cal.read_calibration(run).threshold
    (ham_kept, ham_lost), (spam_missed, spam_caught) = report["spam_confusion"]
    assert report["false_positive_rate"] == ham_lost / (ham_kept + ham_lost)
    assert report["spam_recall"] == spam_caught / (spam_missed + spam_caught)
    assert report["confusion_matrix"] == report["spam_confusion"]  # the labels are decided at the threshold
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.svg", "pr.svg", "roc.svg"]


def test_filter_and_long_messages_use_the_calibration(weighted_run):
    from spamtune.long_messages import predict_long

    root, run, _ = weighted_run
    cal.write_calibration(run, cal.Calibration(2.0, 0.3, "max-ham-loss", 0.1, {}))
    clf = SpamClassifier.load(run, device="cpu", precision="fp32")
    texts = ["WINNER!! free prize", "lunch tomorrow?"]
    assert [p.probability for p in predict_long(clf, texts, "chunks")] == pytest.approx([p.probability for p in clf.predict(texts)])
    message = b"Subject: hello\n\nWINNER!! free prize\n"
    result = CliRunner().invoke(app, ["filter", "--run", str(run), "--precision", "fp32"], input=message)
    assert result.exit_code == 0, result.output
    assert "threshold=0.3" in result.stdout


def test_a_run_of_three_classes_gets_a_temperature_and_no_operating_point(tmp_path):
    """Such a run decides by the most probable class: training fits its temperature (NLL and ECE
    over every class) and reports no threshold, and calibrate refuses to choose one, rather
    than count every class but spam as ham for a threshold nothing would apply."""
    from spamtune.data import Split, write_split

    root = write_tiny_data(tmp_path / "data")
    for name in ("train", "validation", "test"):
        split = tiny_split(12, 0)
        write_split(root / f"{name}.csv", Split(split.texts + ["promo code inside"] * 4, split.labels + [2] * 4))
    (root / "labels.json").write_text(json.dumps({"labels": {"ham": 0, "spam": 1, "promo": 2}}))
    options = ["--data-dir", str(root), "--model", str(root / "tiny.json"), "--weights", "random", "--epochs", "1"]
    result = CliRunner().invoke(app, ["finetune", *options, "--device", "cpu", "--precision", "fp32", "--run", "three"])
    assert result.exit_code == 0, result.stderr
    assert "; the run decides by the most probable class, with no threshold\n" in result.stderr
    assert "spamtune calibrate" not in result.stderr
    run = root / "runs" / "three"
    stored = cal.read_calibration(run)
    assert set(stored.validation) == {"n", "nll_before", "nll_after", "ece_before", "ece_after"}
    assert "threshold" not in json.loads((run / "summary.json").read_text())["calibration"]

    refused = CliRunner().invoke(app, ["calibrate", "--run", str(run), "--max-ham-loss", "10%"])
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr == (
        "Error: cannot calibrate: the run has 3 classes (ham, spam, promo) and decides by the most probable one; "
        "calibration and operating points are defined for two-class (spam/ham) runs (training fitted this run's "
        "temperature on validation)\n"
    )
    assert cal.read_calibration(run) == stored
    with pytest.raises(SpamtuneUsageError, match="needs two classes"):
        cal.calibrate_logits(torch.zeros(4, 3), [0, 1, 2, 0], 1, rule="max-ham-loss", target=0.5)
