"""Evaluation: the metrics agree with scikit-learn, and `spamtune evaluate` reproduces the
fine-tuning summary and reports in both formats."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import pytest
from helpers import tiny_options, tiny_split, write_rigged_run, write_tiny_data
from typer.testing import CliRunner

from spamtune import metrics, train
from spamtune.cli import app

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# --------------------------------------------------------------------------- metrics vs scikit-learn


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(num_classes, seed):
    rng = random.Random(seed)
    n = 200
    y_true = [rng.randrange(num_classes) for _ in range(n)]
    # Coarse probabilities so that ties occur and the tie handling of ROC-AUC is exercised.
    raw = [[rng.randint(1, 6) for _ in range(num_classes)] for _ in range(n)]
    probs = [[v / sum(row) for v in row] for row in raw]
    y_pred = [max(range(num_classes), key=p.__getitem__) for p in probs]
    labels = list(range(num_classes))

    assert metrics.accuracy(y_true, y_pred) == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    matrix = metrics.confusion_matrix(y_true, y_pred, num_classes)
    assert matrix == sklearn_metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    for c, scores in enumerate(metrics.per_class_scores(matrix)):
        assert scores["precision"] == pytest.approx(precision[c])
        assert scores["recall"] == pytest.approx(recall[c])
        assert scores["f1"] == pytest.approx(f1[c])
        assert scores["support"] == support[c]
    if num_classes == 2:
        expected_auc = sklearn_metrics.roc_auc_score(y_true, [p[1] for p in probs])
    else:
        expected_auc = sklearn_metrics.roc_auc_score(y_true, probs, multi_class="ovr", average="macro")
    assert metrics.roc_auc(y_true, probs) == pytest.approx(expected_auc)


def test_edge_cases_of_the_metrics():
    assert metrics.average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert metrics.roc_auc([1, 1, 1], [[0.2, 0.8]] * 3) is None  # one class only: undefined
    assert metrics.per_class_scores([[0, 0], [3, 0]])[1] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    report = metrics.classification_report([0, 1, 1], [0, 1, 0], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], ["ham", "spam"])
    assert report["accuracy"] == pytest.approx(2 / 3) and report["confusion_matrix"] == [[1, 0], [1, 1]]
    assert report["per_class"]["spam"]["recall"] == 0.5 and report["roc_auc"] == 1.0


# --------------------------------------------------------------------------- spamtune evaluate


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = write_tiny_data(tmp_path_factory.mktemp("data"))
    summary = train.finetune(tiny_options(root, epochs=2), root / "runs" / "eval")
    return root, Path(summary["run"]), summary


def evaluate(*args: str):
    return CliRunner().invoke(app, ["evaluate", *args])


def test_json_matches_the_finetune_summary(run):
    root, run_dir, summary = run
    # No RUN_DIR: the latest run under the data root.
    result = evaluate("--data-dir", str(root), "--format", "json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["run"] == str(run_dir) and report["split"] == "test" and report["n"] == summary["n_test"]
    assert report["accuracy"] == summary["test_accuracy"]
    assert report["loss"] == pytest.approx(summary["test_loss"], abs=1e-6)
    assert sum(map(sum, report["confusion_matrix"])) == report["n"]
    assert set(report["per_class"]) == {"ham", "spam"} and 0.0 <= report["roc_auc"] <= 1.0
    assert evaluate("--data-dir", str(root), "--json", "--device", "cpu").stdout == result.stdout


def test_last_pooling_and_bf16_runs_evaluate_as_they_were_tested(tmp_path):
    """``last`` pooling pads to the run's maximum length and bf16 runs evaluate in bf16, as in training."""
    root = write_tiny_data(tmp_path / "data")
    summary = train.finetune(tiny_options(root, pooling="last", precision="bf16"), root / "runs" / "last")
    report = json.loads(evaluate(summary["run"], "--format", "json", "--device", "cpu").stdout)
    assert report["compute_dtype"] == "bf16" and "precision" not in report  # "precision" is a per-class metric
    assert (report["accuracy"], report["loss"]) == (summary["test_accuracy"], pytest.approx(summary["test_loss"], abs=1e-6))


def test_all_splits_and_a_labelled_file(run, tmp_path):
    root, run_dir, summary = run
    report = json.loads(evaluate(str(run_dir), "--split", "all", "--format", "json").stdout)
    assert report["n"] == 60 and set(report["by_split"]) == {"train", "validation", "test"}
    assert report["by_split"]["validation"]["accuracy"] == summary["validation_accuracy"]
    assert report["by_split"]["train"]["accuracy"] == summary["train_accuracy"]

    # The test split as a file with label names instead of indices gives the same figures.
    test = tiny_split(10, 50)
    file = tmp_path / "labelled.jsonl"
    file.write_text("".join(json.dumps({"text": t, "label": ["ham", "spam"][y]}) + "\n" for t, y in zip(test.texts, test.labels)))
    by_file = json.loads(evaluate(str(run_dir), "--input", str(file), "--format", "json").stdout)
    assert by_file["input"] == str(file) and by_file["accuracy"] == summary["test_accuracy"]
    assert by_file["confusion_matrix"] == json.loads(evaluate(str(run_dir), "--format", "json").stdout)["confusion_matrix"]


def test_a_labelled_file_on_stdin_scores_as_the_file_and_is_named_stdin(run, tmp_path):
    root, run_dir, summary = run
    test = tiny_split(10, 50)
    rows = "".join(json.dumps({"text": t, "label": ["ham", "spam"][y]}) + "\n" for t, y in zip(test.texts, test.labels))
    stdin = ["evaluate", str(run_dir), "--input", "-", "--input-format", "jsonl", "--no-plots"]
    piped = CliRunner().invoke(app, [*stdin, "--format", "json"], input=rows)
    assert piped.exit_code == 0, piped.stderr
    report = json.loads(piped.stdout)
    assert report["input"] == "stdin" and report["accuracy"] == summary["test_accuracy"]
    text = CliRunner().invoke(app, stdin, input=rows)
    assert text.exit_code == 0 and "on stdin" in text.stdout and "on -" not in text.stdout
    wrong = CliRunner().invoke(app, stdin, input=rows.replace('"ham"', '"eggs"'))
    assert wrong.exit_code == 1 and wrong.stderr.startswith("Error: stdin has the label 'eggs'")
    unsaid = CliRunner().invoke(app, ["evaluate", str(run_dir), "--input", "-", "--no-plots"], input=rows)
    assert unsaid.exit_code == 2 and unsaid.stderr == "Error: cannot tell the format of stdin; pass --input-format tsv|csv|jsonl\n"
    for misplaced in (["--split", "test"], ["--input", f"spam={tmp_path}"]):
        refused = CliRunner().invoke(app, ["evaluate", str(run_dir), *misplaced, "--input-format", "csv"])
        assert refused.exit_code == 2 and "--input-format applies to a labelled-text --input" in refused.stderr


def test_splits_a_killed_prepare_left_mixed_are_refused_and_a_labelled_file_still_scored(run, tmp_path):
    from spamtune.split_lock import RENAMING_MARK

    root, run_dir, summary = run
    (root / RENAMING_MARK).write_bytes(b"")  # what a prepare killed among its renames leaves
    try:
        refused = evaluate(str(run_dir))
        assert refused.exit_code == 1 and refused.stdout == ""
        assert refused.stderr == f"Error: the prepared splits in {root} may be from two preparations: a `spamtune prepare` was stopped while it renamed its files into place; run it again\n"
        test = tiny_split(10, 50)
        file = tmp_path / "labelled.jsonl"
        file.write_text("".join(json.dumps({"text": t, "label": ["ham", "spam"][y]}) + "\n" for t, y in zip(test.texts, test.labels)))
        scored = evaluate(str(run_dir), "--input", str(file), "--format", "json")
        assert scored.exit_code == 0, scored.stderr
        assert json.loads(scored.stdout)["accuracy"] == summary["test_accuracy"]
    finally:
        (root / RENAMING_MARK).unlink()


def test_tables_on_stderr_and_the_baseline(run):
    _, run_dir, summary = run
    result = evaluate(str(run_dir), "--baseline")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"accuracy {summary['test_accuracy']:.2%} on the test split (10 messages); baseline ")
    for heading in ("Overall", "Per class", "Confusion matrix, spamtune", "Confusion matrix, TF-IDF+LR", "ROC-AUC"):
        assert heading in result.stderr
    report = json.loads(evaluate(str(run_dir), "--baseline", "--format", "json").stdout)
    assert report["baseline"]["model"].startswith("TF-IDF") and report["baseline"]["n"] == 10


def test_baseline_without_scikit_learn_says_how_to_get_it(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.feature_extraction.text", None)
    result = evaluate(str(run[1]), "--baseline")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == "Error: --baseline needs scikit-learn: pip install 'spamtune[baseline]'"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "dev"], "Invalid value for '--split': 'dev' is not one of test, validation, train, all"),
        (["--precision", "fp8"], "Invalid value for '--precision': 'fp8' is not one of auto, fp32, bf16, fp16"),
        (["--device", "gpu"], "Invalid value for '--device': 'gpu' is not one of auto, cpu, cuda, mps (or cuda:N)"),
        (["--threshold", "1.5"], "Invalid value for '--threshold'"),
        (["--run", "x"], "name the run once: with --run"),
        (["--split", "test", "--input", "x.csv"], "either --split or --input"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_input_is_one_line(run, args, message):
    result = evaluate(str(run[1]), *args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_the_library_names_a_bad_long_mode(run):
    """The CLI's choices stop a bad --long before the core; the API says which modes exist."""
    from spamtune.errors import OptionError
    from spamtune.evaluate import evaluate_run

    with pytest.raises(OptionError, match="unknown long mode 'tail'; choose one of: head, head-tail, chunks"):
        evaluate_run(run[1], long="tail")


def test_no_run_yet(tmp_path):
    result = evaluate("--data-dir", str(tmp_path))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: no fine-tuned model found") and result.stderr.count("\n") == 1


def test_labels_and_paths_with_brackets_are_printed_as_they_are(tmp_path):
    """A label ``[/x]`` or a folder ``[bold]`` would be rich markup: a crash, or text that vanishes."""
    run_dir = write_rigged_run(tmp_path / "runs" / "[bold]r[/x]un", labels={"[/x]": 0, "spam": 1})
    file = tmp_path / "[red]labelled.jsonl"
    rows = [("Do you have time", "[/x]"), ("WIN a prize now!", "spam"), ("lunch?", "[/x]")]
    file.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    result = evaluate(str(run_dir), "--input", str(file), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert f"{run_dir} on {file}: 3 messages" in result.stderr
    assert result.stderr.count("[/x]") >= 3  # per-class row, confusion matrix heading and row
    assert result.stdout.startswith(f"accuracy 100.00% on {file} (3 messages); at threshold 0.5: ")


def test_a_run_or_file_named_with_an_escape_sequence_is_shown_escaped(tmp_path):
    """Their names went to the terminal as they were: the escape sequence set its title."""
    run_dir = write_rigged_run(tmp_path / "runs" / "r\x1b]0;pwned\x07un")
    file = tmp_path / "labelled\x1b[2J.jsonl"
    file.write_text(json.dumps({"text": "WIN a prize now!", "label": "spam"}) + "\n")
    result = evaluate(str(run_dir), "--input", str(file), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stderr + result.stdout
    shown_file = str(tmp_path / "labelled\\x1b[2J.jsonl")
    assert f"{tmp_path / 'runs'}/r\\x1b]0;pwned\\x07un on {shown_file}: 1 messages" in result.stderr
    assert result.stdout.startswith(f"accuracy 100.00% on {shown_file} (1 messages)")


def test_run_by_name_threshold_and_precision(run, monkeypatch):
    """The run named as everywhere else; --threshold decides as predict does; --precision picks the dtype."""
    root, run_dir, summary = run
    by_name = json.loads(evaluate("--run", run_dir.name, "--data-dir", str(root), "--format", "json").stdout)
    assert by_name["run"] == str(run_dir) and by_name["accuracy"] == summary["test_accuracy"]
    assert by_name["threshold"] == 0.5 and by_name["compute_dtype"] == "fp32" and by_name["warnings"] == []
    everything_spam = json.loads(evaluate("--run", str(run_dir), "--threshold", "0", "--format", "json").stdout)
    assert everything_spam["confusion_matrix"][0][0] == 0 and everything_spam["confusion_matrix"][1][0] == 0
    assert everything_spam["per_class"]["spam"]["recall"] == 1.0 and everything_spam["loss"] == by_name["loss"]
    bf16 = json.loads(evaluate("--run", str(run_dir), "--precision", "bf16", "--format", "json").stdout)
    assert bf16["compute_dtype"] == "bf16"
    monkeypatch.setenv("COLUMNS", "200")
    assert "<test|validation|train|all>" in evaluate("--help").stdout


def test_re_prepared_splits_are_refused_unless_forced(run, tmp_path):
    """Scoring a run on splits it was not trained with would count its training messages as test."""
    root, run_dir, summary = run
    other = tmp_path / "other"
    shutil.copytree(root, other, ignore=shutil.ignore_patterns("runs"))
    test_csv = other / "test.csv"
    test_csv.write_text(test_csv.read_text().replace("thanks", "thank you"))
    refused = evaluate("--run", str(run_dir), "--data-dir", str(other))
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1
    assert f"the prepared splits in {other} are not the ones {run_dir.name} was trained with" in refused.stderr
    assert "pass --force to score anyway" in refused.stderr
    forced = evaluate("--run", str(run_dir), "--data-dir", str(other), "--force", "--format", "json")
    assert forced.exit_code == 0
    assert forced.stderr.startswith("WARNING: the prepared splits in ")
    assert json.loads(forced.stdout)["warnings"] == [forced.stderr.removeprefix("WARNING: ").strip()]
    labelled = evaluate("--run", str(run_dir), "--data-dir", str(other), "--input", str(test_csv))
    assert labelled.exit_code == 0  # a file of one's own is no split: nothing to compare


def test_a_file_of_one_class_gives_its_false_positive_rate(run, tmp_path):
    """An inbox of ham alone is what a user checks a filter on before trusting it: the
    figures that need both classes are null, the others are there."""
    _, run_dir, _ = run
    ham = tmp_path / "inbox-ham.csv"
    ham.write_text("label,text\n" + "".join(f"ham,{text}\n" for text in ("see you at noon", "Do you have time", "ok thanks")))
    result = evaluate(str(run_dir), "--input", str(ham), "--format", "json", "--no-plots")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    lost = report["spam_confusion"][0][1]
    assert report["n"] == 3 and report["spam_confusion"][1] == [0, 0]
    assert report["false_positive_rate"] == pytest.approx(lost / 3) and report["accuracy"] == pytest.approx(1 - lost / 3)
    assert report["roc_auc"] is None and report["pr_auc"] is None and report["spam_recall"] is None


def test_an_unknown_label_in_a_file_names_the_file_as_given(run, tmp_path):
    _, run_dir, _ = run
    file = tmp_path / "mails.csv"
    file.write_text("label,text\nham,see you\nphishing,verify your account\n")
    result = evaluate(str(run_dir), "--input", str(file), "--no-plots")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == f"Error: {file} has the label 'phishing'; this run knows ham, spam (or indices 0-1)\n"


def test_a_run_of_three_classes_is_reported_without_the_spam_filter_figures(tmp_path):
    """A run trained on labels other than ham/spam alone has no operating point: the report is
    accuracy, per-class figures and the confusion matrix, on a terminal as in JSON."""
    from spamtune.data import Split, write_split

    root = write_tiny_data(tmp_path / "data")
    for name in ("train", "validation", "test"):
        split = tiny_split(12, 0)
        write_split(root / f"{name}.csv", Split(split.texts + ["promo code inside"] * 4, split.labels + [2] * 4))
    (root / "labels.json").write_text(json.dumps({"labels": {"ham": 0, "spam": 1, "promo": 2}}))
    run_dir = train.finetune(tiny_options(root, epochs=1), root / "runs" / "three")["run"]
    result = evaluate(run_dir, "--no-plots")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("accuracy ") and "threshold" not in result.stdout
    assert "Per class" in result.stderr and "Spam filter" not in result.stderr
    report = json.loads(evaluate(run_dir, "--no-plots", "--format", "json").stdout)
    assert report["labels"] == ["ham", "spam", "promo"] and "spam_confusion" not in report
    # Such a run decides by the most probable class: a threshold would be silently ignored.
    refused = evaluate(run_dir, "--no-plots", "--threshold", "0.3")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr == (
        "Error: --threshold cannot apply: the run has 3 classes (ham, spam, promo) and decides by the most "
        "probable one; a spam threshold is for two-class (spam/ham) runs\n"
    )


def test_a_label_that_only_looks_like_an_index_is_an_unknown_label(run, tmp_path):
    """"+-1" and "²" pass a digit test once signs are stripped, and int() refused them: an
    unexpected ValueError rather than the one-line unknown-label error."""
    _, run_dir, _ = run
    for odd in ("+-1", "\u00b2"):
        file = tmp_path / "mails.csv"
        file.write_text(f"label,text\nham,see you\n{odd},verify your account\n", encoding="utf-8")
        result = evaluate(str(run_dir), "--input", str(file), "--no-plots")
        assert result.exit_code == 1 and result.stdout == "", result.output
        assert result.stderr == f"Error: {file} has the label {odd!r}; this run knows ham, spam (or indices 0-1)\n"


def test_a_run_with_numbers_for_labels_takes_no_indices(tmp_path):
    """With a label named -1, a file's "0" would have meant that class by position, silently:
    the number is a label there, and one the run does not know."""
    run_dir = write_rigged_run(tmp_path / "runs" / "numbered", labels={"-1": 0, "spam": 1})
    file = tmp_path / "mails.jsonl"
    file.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in (("see you", "-1"), ("WIN now!", "spam"))))
    named = evaluate(str(run_dir), "--input", str(file), "--device", "cpu", "--format", "json", "--no-plots")
    assert named.exit_code == 0, named.stderr
    assert json.loads(named.stdout)["n"] == 2
    file.write_text(json.dumps({"text": "see you", "label": "0"}) + "\n")
    by_index = evaluate(str(run_dir), "--input", str(file), "--device", "cpu", "--no-plots")
    assert by_index.exit_code == 1 and by_index.stdout == ""
    assert by_index.stderr == f"Error: {file} has the label '0'; this run knows -1, spam\n"
