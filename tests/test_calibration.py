"""Temperature scaling, ECE, the threshold search and the threshold-free figures."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from spamtune import calibration as cal
from spamtune.errors import SpamtuneError, SpamtuneUsageError


def overconfident_set(n: int = 2000, true_scale: float = 1.0, seed: int = 0):
    """Logits whose true log-odds are ``z`` but which the "model" reports as ``4 z``: labels are
    drawn from ``sigmoid(z)``, so the right temperature is about 4."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g) * 2 * true_scale
    labels = (torch.rand(n, generator=g) < torch.sigmoid(z)).long()
    logits = torch.stack([torch.zeros(n), 4 * z], dim=1)
    return logits, labels


def test_temperature_scaling_lowers_nll_and_ece_on_an_overconfident_set():
    logits, labels = overconfident_set()
    temperature = cal.fit_temperature(logits, labels)
    assert 3.3 < temperature < 4.8  # the 4x overconfidence it was built with
    assert cal.nll(logits, labels, temperature) < cal.nll(logits, labels, 1.0) - 0.1
    before = cal.expected_calibration_error(cal.calibrated_probabilities(logits), labels.tolist())
    after = cal.expected_calibration_error(cal.calibrated_probabilities(logits, temperature), labels.tolist())
    assert after < before / 2


def test_temperature_is_the_nll_minimum():
    logits, labels = overconfident_set(n=500, seed=3)
    t = cal.fit_temperature(logits, labels)
    best = cal.nll(logits, labels, t)
    for other in (t * 0.9, t * 1.1, 1.0):
        assert best <= cal.nll(logits, labels, other)


def test_underconfident_logits_get_a_temperature_below_one():
    logits, labels = overconfident_set(n=1000, seed=1)
    assert cal.fit_temperature(logits / 16, labels) < 0.5


def test_a_calibrated_set_keeps_temperature_near_one_and_separated_data_stays_bounded():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4000, generator=g) * 2
    labels = (torch.rand(4000, generator=g) < torch.sigmoid(z)).long()
    assert 0.9 < cal.fit_temperature(torch.stack([torch.zeros(4000), z], 1), labels) < 1.1
    separated = torch.tensor([[0.0, 5.0], [0.0, -5.0]])
    assert cal.fit_temperature(separated, [1, 0]) == pytest.approx(cal.MIN_TEMPERATURE, rel=1e-3)
    assert cal.fit_temperature(torch.zeros(0, 2), []) == 1.0
    # One class only: nothing to weigh it against, so no temperature (its NLL wants a bound).
    assert cal.fit_temperature(torch.tensor([[0.0, 1.0], [0.0, 3.0]]), [1, 1]) == 1.0
    assert cal.fit_temperature(torch.tensor([[0.0, 1.0], [0.0, 3.0]]), [0, 0]) == 1.0
    with pytest.raises(SpamtuneError, match="non-finite"):
        cal.fit_temperature(torch.tensor([[0.0, float("nan")]]), [1])


def test_ece_by_hand():
    # Two samples in the 0.9 bin, one right: |0.5 - 0.9| ; one in the 0.6 bin, right: |1 - 0.6|.
    probs = torch.tensor([[0.1, 0.9], [0.1, 0.9], [0.4, 0.6]])
    ece = cal.expected_calibration_error(probs, [1, 0, 1])
    assert ece == pytest.approx((2 * 0.4 + 1 * 0.4) / 3)
    bins = cal.reliability_bins(probs, [1, 0, 1])
    assert len(bins) == 15 and sum(b.count for b in bins) == 3
    assert cal.expected_calibration_error(torch.tensor([[0.0, 1.0]]), [1]) == 0.0


# --------------------------------------------------------------------------- threshold search

#          ham                            spam
SCORES = [0.05, 0.10, 0.20, 0.20, 0.70] + [0.20, 0.60, 0.80, 0.90, 0.95]
IS_SPAM = [False] * 5 + [True] * 5


def test_max_ham_loss_picks_the_highest_recall_within_the_budget():
    choice = cal.threshold_for_max_ham_loss(IS_SPAM, SCORES, 0.2)  # 1 ham allowed
    # One ham may be lost: the 0.70 one. Flagging >= 0.60 catches 4 spam with 1 FP; going down to
    # 0.20 would flag three ham (a tie with a spam), so the search stops at 0.60.
    assert choice.validation.false_positives == 1 and choice.validation.true_positives == 4
    assert 0.20 < choice.threshold <= 0.60
    assert choice.threshold == pytest.approx(0.40)  # midway to the next lower score
    # 39% of 5 ham still allows only one.
    assert cal.threshold_for_max_ham_loss(IS_SPAM, SCORES, 0.39).threshold == choice.threshold
    # Two allowed: the 0.20 tie would flag two more ham, so still the same point.
    assert cal.threshold_for_max_ham_loss(IS_SPAM, SCORES, 0.4).threshold == choice.threshold
    # Four allowed: down to the tie at 0.20, every spam caught with 3 false positives.
    four = cal.threshold_for_max_ham_loss(IS_SPAM, SCORES, 0.8)
    assert (four.validation.true_positives, four.validation.false_positives) == (5, 3)
    assert 0.10 < four.threshold <= 0.20


def test_max_ham_loss_zero_false_positives_and_ties():
    scores = [0.1, 0.5, 0.5, 0.3, 0.3] + [0.5, 0.5, 0.9]
    is_spam = [False] * 5 + [True] * 3
    choice = cal.threshold_for_max_ham_loss(is_spam, scores, 0.39)
    # Two ham tie with two spam at 0.5: flagging them costs 2 FP > 1, so only 0.9 is flagged.
    assert (choice.validation.true_positives, choice.validation.false_positives) == (1, 0)
    assert 0.5 < choice.threshold <= 0.9
    loose = cal.threshold_for_max_ham_loss(is_spam, scores, 0.4)  # 2 ham allowed: the tie fits
    assert (loose.validation.true_positives, loose.validation.false_positives) == (3, 2)
    assert 0.3 < loose.threshold <= 0.5


def test_an_unmeasurable_target_is_refused_with_the_smallest_measurable_rate():
    with pytest.raises(SpamtuneError, match=r"not measurable on 5 validation ham.*1/5 = 20\.00%"):
        cal.threshold_for_max_ham_loss(IS_SPAM, SCORES, 0.19)
    with pytest.raises(SpamtuneError, match="no ham"):
        cal.threshold_for_max_ham_loss([True, True], [0.2, 0.9], 0.01)
    with pytest.raises(SpamtuneUsageError):
        cal.threshold_for_max_ham_loss(IS_SPAM, SCORES, 1.0)


def test_all_ham_flags_nothing_when_nothing_is_to_be_won():
    scores = [0.1, 0.4, 0.8]
    choice = cal.threshold_for_max_ham_loss([False] * 3, scores, 0.34)  # 1 allowed, but no spam
    assert choice.validation.false_positives == 0 and choice.threshold > 0.8
    assert choice.validation.spam_recall is None and choice.validation.false_positive_rate == 0.0


def test_cost_ratio_minimises_expected_cost():
    # Ratio 1: each FP costs one missed spam. Flag >= 0.6: 1 FP + 1 FN = 2 (best);
    # >= 0.8: 0 FP + 2 FN = 2 too, and it flags less, so it wins the tie.
    cheap = cal.threshold_for_cost_ratio(IS_SPAM, SCORES, 1.0)
    assert (cheap.validation.false_positives, cheap.validation.false_negatives) == (0, 2)
    # Ham ten times as dear: never lose one.
    dear = cal.threshold_for_cost_ratio(IS_SPAM, SCORES, 10.0)
    assert dear.validation.false_positives == 0
    # Ham nearly free: catch every spam.
    free = cal.threshold_for_cost_ratio(IS_SPAM, SCORES, 0.1)
    assert free.validation.false_negatives == 0 and free.threshold <= 0.2
    with pytest.raises(SpamtuneUsageError):
        cal.threshold_for_cost_ratio(IS_SPAM, SCORES, 0)


def test_operating_point_figures():
    point = cal.operating_point(IS_SPAM, SCORES, 0.5)
    assert point.confusion() == [[4, 1], [1, 4]]
    assert point.false_positive_rate == 0.2 and point.spam_recall == 0.8
    assert point.precision == 0.8 and point.f1 == pytest.approx(0.8)
    none_flagged = cal.operating_point(IS_SPAM, SCORES, 0.99)
    assert none_flagged.precision is None and none_flagged.f1 == 0.0


def test_parse_rate():
    assert cal.parse_rate("0.5%") == pytest.approx(0.005)
    assert cal.parse_rate("0.01") == 0.01
    for bad in ("abc", "100%", "-1%"):
        with pytest.raises(SpamtuneUsageError):
            cal.parse_rate(bad)


# --------------------------------------------------------------------------- against scikit-learn


def test_aucs_and_curves_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(7)
    for trial in range(20):
        n = rng.randint(5, 200)
        is_spam = [rng.random() < 0.3 for _ in range(n)]
        is_spam[0], is_spam[1] = True, False
        # Rounded scores: plenty of ties, which both definitions must handle alike.
        scores = [round(rng.random(), rng.choice([1, 2, 6])) for _ in range(n)]
        assert cal.average_precision(is_spam, scores) == pytest.approx(metrics.average_precision_score(is_spam, scores))
        report = cal.binary_report(is_spam, scores, 0.5)
        assert report["roc_auc"] == pytest.approx(metrics.roc_auc_score(is_spam, scores))
        assert report["f1"] == pytest.approx(metrics.f1_score(is_spam, [s >= 0.5 for s in scores], zero_division=0))
        fpr, tpr = cal.roc_curve(is_spam, scores)
        ref_fpr, ref_tpr, _ = metrics.roc_curve(is_spam, scores, drop_intermediate=False)
        assert fpr == pytest.approx(ref_fpr.tolist()) and tpr == pytest.approx(ref_tpr.tolist())


# --------------------------------------------------------------------------- the run's record


def test_calibrate_logits_and_the_record_round_trip(tmp_path):
    logits, labels = overconfident_set(n=600, seed=5)
    record = cal.calibrate_logits(logits, labels.tolist(), 1, rule="max-ham-loss", target=0.05)
    v = record.validation
    assert v["nll_after"] < v["nll_before"] and v["ece_after"] < v["ece_before"]
    assert v["false_positive_rate"] <= 0.05
    cal.write_calibration(tmp_path, record)
    assert json.loads((tmp_path / cal.CALIBRATION_FILE).read_text())["format"] == cal.CALIBRATION_FORMAT
    again = cal.read_calibration(tmp_path)
    assert again == record
    assert cal.read_calibration(tmp_path / "nowhere") is None
    (tmp_path / cal.CALIBRATION_FILE).write_text('{"format": "spamtune-calibration/1", "temperature": -1}')
    with pytest.raises(SpamtuneError, match="incomplete"):
        cal.read_calibration(tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", False, "threshold must be a finite number, not false"),  # float(False): every message spam
        ("temperature", True, "temperature must be a finite number, not true"),
        ("threshold", "0.5", 'threshold must be a finite number, not "0.5"'),
        ("target", float("nan"), "target must be a finite number, not NaN"),
        ("rule", "[bold]max[/]", "rule must be one of max-ham-loss, threshold, cost-ratio"),
        ("validation", list(range(50)), r"validation must be an object, not \[0, 1, .*\.\.\.$"),
    ],
)
def test_a_hand_edited_record_of_the_wrong_type_is_refused_in_one_line(tmp_path, field, value, message):
    record = {"format": cal.CALIBRATION_FORMAT, "temperature": 1.0, "threshold": 0.5, "rule": "threshold", "target": 0.5}
    (tmp_path / cal.CALIBRATION_FILE).write_text(json.dumps({**record, field: value}))
    with pytest.raises(SpamtuneError, match=message) as refused:
        cal.read_calibration(tmp_path)
    assert "\n" not in str(refused.value)


def test_evaluation_plots_are_written(tmp_path):
    from xml.etree import ElementTree

    from spamtune.plots import plot_binary_evaluation

    logits, labels = overconfident_set(n=300, seed=4)
    probs = cal.calibrated_probabilities(logits, 4.0)
    written = plot_binary_evaluation(tmp_path, [bool(y) for y in labels.tolist()], probs, 1, 0.5, cal.calibrated_probabilities(logits))
    assert [p.name for p in written] == ["roc.svg", "pr.svg", "calibration.svg"]
    for path in written:
        assert ElementTree.fromstring(path.read_text()).tag == "{http://www.w3.org/2000/svg}svg"
    assert not list(tmp_path.glob(".*.part"))


@pytest.fixture
def rigged_run_and_data(tmp_path):
    """The rigged run (spam, p = 0.88, for a final "!"; ham, 0.12, otherwise) and a data root on
    which it is right 9 times in 10 for either class: 2 of the 20 ham end in "!"."""
    from helpers import write_rigged_run

    from spamtune.data import Split, write_split

    run = write_rigged_run(tmp_path / "run")
    data = tmp_path / "data"
    texts = [f"see you at {i}" for i in range(18)] + ["great news!", "thanks!"]
    texts += [f"claim prize {i}!" for i in range(18)] + ["call 0800 now", "free entry"]
    labels = [0] * 20 + [1] * 20
    for name in ("train", "validation", "test"):
        write_split(data / f"{name}.csv", Split(texts, labels))
    (data / "labels.json").write_text('{"labels": {"ham": 0, "spam": 1}}')
    return run, data


def test_calibrate_run_fits_the_validation_split_and_stores_it(rigged_run_and_data):
    run, data = rigged_run_and_data
    record = cal.calibrate_run(run, rule="max-ham-loss", target=0.1, data_dir=data, device="cpu")
    assert record.temperature < 1.0  # 90% right at 88% confidence: sharpen a little
    assert record.validation["false_positive_rate"] == 0.1 and record.validation["spam_recall"] == 0.9
    assert cal.read_calibration(run) == record

    # A new operating point keeps the fitted temperature unless asked to refit.
    stricter = cal.calibrate_run(run, rule="max-ham-loss", target=0.05, data_dir=data, device="cpu", refit_temperature=False)
    assert stricter.temperature == record.temperature
    assert stricter.validation["false_positive_rate"] == 0.0 and stricter.threshold > record.threshold
    with pytest.raises(SpamtuneError, match="not measurable on 20 validation ham"):
        cal.calibrate_run(run, rule="max-ham-loss", target=0.01, data_dir=data, device="cpu")
    assert cal.read_calibration(run) == stricter  # a refused target leaves the stored one


def test_a_validation_split_of_one_class_keeps_the_temperature_and_an_empty_one_is_refused(rigged_run_and_data):
    from spamtune.data import Split, write_split

    run, data = rigged_run_and_data
    write_split(data / "validation.csv", Split([f"see you at {i}" for i in range(9)] + ["great news!"], [0] * 10))
    record = cal.calibrate_run(run, rule="max-ham-loss", target=0.1, data_dir=data, device="cpu")
    assert record.temperature == 1.0 and record.validation["n_spam"] == 0
    write_split(data / "validation.csv", Split([], []))
    with pytest.raises(SpamtuneError, match="validation split .* holds no messages"):
        cal.calibrate_run(run, rule="threshold", target=0.5, data_dir=data, device="cpu")
    assert cal.read_calibration(run) == record


def test_calibrate_command(rigged_run_and_data):
    from typer.testing import CliRunner

    from spamtune.cli import app

    run, data = rigged_run_and_data
    common = [str(run), "--data-dir", str(data), "--device", "cpu"]
    result = CliRunner().invoke(app, ["calibrate", *common, "--max-ham-loss", "10%"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(run / cal.CALIBRATION_FILE)
    assert "threshold" in result.stderr and "10.00% of 20 ham marked spam, 90.00% of 20 spam caught" in result.stderr
    # 2 lost ham at 3 each + 2 missed spam (8) beat flagging nothing (20 missed spam)...
    result = CliRunner().invoke(app, ["calibrate", *common, "--cost-ratio", "3", "--format", "json"])
    record = json.loads(result.stdout)
    assert (record["rule"], record["target"]) == ("cost-ratio", 3.0) and record["validation"]["false_positive_rate"] == 0.1
    # ... but not at 20 each (42).
    dear = json.loads(CliRunner().invoke(app, ["calibrate", *common, "--cost-ratio", "20", "--format", "json"]).stdout)
    assert dear["validation"]["false_positive_rate"] == 0.0 and dear["validation"]["spam_recall"] == 0.0
    refused = CliRunner().invoke(app, ["calibrate", *common, "--max-ham-loss", "1%"])
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1 and "smallest measurable" in refused.stderr
    both = CliRunner().invoke(app, ["calibrate", *common, "--threshold", "0.3", "--cost-ratio", "2"])
    assert both.exit_code == 2 and "not --threshold and --cost-ratio" in both.stderr
    short = json.loads(CliRunner().invoke(app, ["calibrate", *common, "--cost-ratio", "20", "--json"]).stdout)
    assert short == dear


def test_calibrate_prints_a_run_path_holding_an_escape_sequence_escaped_on_one_line(rigged_run_and_data):
    """The path of calibration.json went to stdout as it was: a run folder named with an escape
    sequence and a line break drove the terminal and made two result lines of one."""
    from typer.testing import CliRunner

    from spamtune.cli import app

    run, data = rigged_run_and_data
    odd = run.rename(run.with_name("run\x1b]0;owned\x07\nx"))
    result = CliRunner().invoke(app, ["calibrate", str(odd), "--data-dir", str(data), "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{odd.parent}/run\\x1b]0;owned\\x07\\nx/{cal.CALIBRATION_FILE}\n"
    assert (odd / cal.CALIBRATION_FILE).is_file()


def test_a_large_bare_fraction_for_max_ham_loss_is_said_back_as_a_percentage(rigged_run_and_data):
    """"0.5" is half the ham (the user likely meant 0.5%): it is taken as given, with a warning;
    the same rate as a percentage, or a small bare fraction, warns of nothing."""
    from typer.testing import CliRunner

    from spamtune.cli import app

    run, data = rigged_run_and_data
    common = [str(run), "--data-dir", str(data), "--device", "cpu", "--format", "json"]
    bare = CliRunner().invoke(app, ["calibrate", *common, "--max-ham-loss", "0.5"])
    assert bare.exit_code == 0 and json.loads(bare.stdout)["target"] == 0.5
    assert "WARNING: --max-ham-loss 0.5 is a fraction: up to 50% of ham may be marked spam; for 0.5 percent write 0.5%" in bare.stderr
    for quiet in ("50%", "0.05"):
        result = CliRunner().invoke(app, ["calibrate", *common, "--max-ham-loss", quiet])
        assert result.exit_code == 0 and "WARNING" not in result.stderr, quiet


def test_a_run_still_training_is_named_so_by_calibrate_and_by_a_given_threshold(tmp_path):
    from typer.testing import CliRunner

    from spamtune import runs
    from spamtune.cli import app

    # What a run folder holds while training: its settings and a checkpoint, no config yet.
    run = tmp_path / "runs" / "training"
    (run / runs.RESUME_DIR).mkdir(parents=True)
    (run / runs.HPARAMS_FILE).write_text("{}")
    runs.resume_file(run).write_bytes(b"a checkpoint")
    with runs.lock_run_dir(run):
        for command in (["calibrate", "--max-ham-loss", "1%"], ["evaluate", "--threshold", "0.3"], ["predict", "--threshold", "0.3", "hi"]):
            result = CliRunner().invoke(app, [*command, "--run", str(run), "--device", "cpu"])
            assert result.exit_code == 1 and result.stdout == "", result.output
            assert result.stderr == f"Error: {run} is still training (a process holds its lock); its classifier is written when training ends\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="a device whose writes fail with a full disk")
def test_calibrate_to_a_full_stdout_says_that_calibration_json_is_written(rigged_run_and_data):
    """calibration.json is in place before the report is printed: "cannot write the output"
    alone told a script that the run's threshold had stayed as it was."""
    import subprocess
    import sys

    run, data = rigged_run_and_data
    before = (run / "calibration.json").read_bytes() if (run / "calibration.json").exists() else None
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "spamtune", "calibrate", "--threshold", "0.25", "--run", str(run), "--data-dir", str(data),
             "--device", "cpu", "-q"],
            stdout=full, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
        )  # fmt: skip
    assert (run / "calibration.json").read_bytes() != before and json.loads((run / "calibration.json").read_text())["threshold"] == 0.25
    assert (proc.returncode, proc.stderr) == (
        1, f"Error: {run / 'calibration.json'} is written, but its report could not be written to stdout: No space left on device\n"
    )


def test_calibrate_and_evaluate_refuse_a_closed_stdout_before_any_work(rigged_run_and_data):
    """Started with ``>&-``, Python has no sys.stdout: evaluate's report and calibrate's record
    would vanish with exit 0 (and calibrate would have changed the run); one line instead."""
    import os
    import subprocess
    import sys

    run, data = rigged_run_and_data
    for command in (["calibrate", "--max-ham-loss", "10%"], ["evaluate", "--no-plots"]):
        proc = subprocess.run(
            [sys.executable, "-m", "spamtune", *command, "--run", str(run), "--data-dir", str(data), "--device", "cpu"],
            preexec_fn=lambda: os.close(1), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
        )  # fmt: skip
        assert (proc.returncode, proc.stderr) == (1, "Error: stdout is closed: there is nowhere to write the output "
                                                     "(redirect it instead, e.g. > /dev/null)\n")  # fmt: skip
    assert not (run / cal.CALIBRATION_FILE).exists()


def test_calibrating_or_evaluating_an_interrupted_run_says_its_weights_are_the_best_so_far(rigged_run_and_data):
    from typer.testing import CliRunner

    from spamtune import runs
    from spamtune.cli import app

    run, data = rigged_run_and_data
    (run / runs.RESUME_DIR).mkdir()
    runs.resume_file(run).write_bytes(b"a checkpoint")
    said = f"{run} is unfinished: these are its best weights so far; finish it with: spamtune finetune --resume --run {run}"
    common = ["--run", str(run), "--data-dir", str(data), "--device", "cpu"]
    calibrated = CliRunner().invoke(app, ["calibrate", *common, "--max-ham-loss", "10%"])
    assert calibrated.exit_code == 0 and calibrated.stdout == f"{run / cal.CALIBRATION_FILE}\n"
    # Finishing it writes calibration.json again, at 0.5: the point chosen here would go unsaid.
    assert f"{said}; that replaces this calibration with the threshold 0.5, so calibrate again after it\n" in calibrated.stderr
    evaluated = CliRunner().invoke(app, ["evaluate", *common, "--json", "--no-plots"])
    assert evaluated.exit_code == 0 and f"{said}\n" in evaluated.stderr
    assert json.loads(evaluated.stdout)["threshold"] == cal.read_calibration(run).threshold


def test_the_note_on_an_interrupted_run_named_with_an_escape_sequence_shows_it_escaped(rigged_run_and_data):
    """Notes on stderr printed the run folder as it was (warnings and errors escape it): an
    interrupted run named with an escape sequence set the terminal's title on every evaluate."""
    from typer.testing import CliRunner

    from spamtune import runs
    from spamtune.cli import app

    run, data = rigged_run_and_data
    run = run.rename(run.with_name("run\x1b]0;owned\x07"))
    (run / runs.RESUME_DIR).mkdir()
    runs.resume_file(run).write_bytes(b"a checkpoint")
    common = ["--run", str(run), "--data-dir", str(data), "--device", "cpu"]
    for command in (["calibrate", *common, "--json"], ["evaluate", *common, "--json", "--no-plots"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.stderr
        assert "\x1b" not in result.stderr and "\x07" not in result.stderr
        assert f"{run.parent}/run\\x1b]0;owned\\x07 is unfinished: these are its best weights so far" in result.stderr


def test_predict_and_evaluate_decide_at_the_threshold_as_calibrate_chose_it(rigged_run_and_data, monkeypatch):
    """Near p = 1 the validation scores are closer than float32 can tell: calibrate's threshold
    sits between a lost ham (logit gap 18) and a spam (18.5), and float32 would flag both."""
    from spamtune import infer
    from spamtune.forward import decided_classes

    run, _ = rigged_run_and_data
    logits = torch.tensor([[0.0, gap] for gap in (18.0, 18.0, 0.0, 19.0, 18.5)])  # the model's float32
    labels = [0, 0, 0, 1, 1]
    record = cal.calibrate_logits(logits, labels, 1, rule="max-ham-loss", target=0.34, temperature=1.0)
    assert record.validation["confusion_matrix"] == [[3, 0], [0, 2]]
    assert decided_classes(logits, 1, record.threshold).tolist() == [0, 0, 0, 1, 1]  # evaluate's labels

    classifier = infer.SpamClassifier.load(run, device="cpu", threshold=record.threshold)
    monkeypatch.setattr(infer, "predict_logits", lambda model, examples, *args, **kwargs: logits[: len(examples)])
    assert [p.label for p in classifier.predict(["a", "b", "c", "d", "e"])] == ["ham", "ham", "ham", "spam", "spam"]


def test_calibrate_refuses_splits_prepared_differently_from_the_run_s_unless_forced(rigged_run_and_data):
    from typer.testing import CliRunner

    from spamtune import runs
    from spamtune.cli import app
    from spamtune.examples import data_fingerprint

    run, data = rigged_run_and_data
    # Trained on splits that were then prepared again: validation may now hold its training messages.
    runs.write_hparams(run, {"data_dir": str(data), "resolved": {"data_fingerprint": "trained-on-other-splits"}})
    common = ["--run", str(run), "--device", "cpu", "--max-ham-loss", "10%"]
    refused = CliRunner().invoke(app, ["calibrate", *common])
    assert refused.exit_code == 1 and refused.stdout == "" and refused.stderr.count("\n") == 1
    assert "are not the ones run was trained with" in refused.stderr and "pass --force" in refused.stderr
    assert not (run / cal.CALIBRATION_FILE).exists()
    forced = CliRunner().invoke(app, ["calibrate", *common, "--force"])
    assert forced.exit_code == 0 and "WARNING: the prepared splits" in forced.stderr and cal.read_calibration(run) is not None
    runs.write_hparams(run, {"data_dir": str(data), "resolved": {"data_fingerprint": data_fingerprint(data)}})
    assert CliRunner().invoke(app, ["calibrate", *common]).exit_code == 0  # its own splits


def test_a_resumed_run_training_now_is_not_calibrated(rigged_run_and_data):
    """It holds a classifier (its best so far) and its lock: the end of training writes
    calibration.json again, so an operating point chosen now would be gone without a word."""
    from spamtune import runs

    run, data = rigged_run_and_data
    with runs.lock_run_dir(run):
        with pytest.raises(SpamtuneError, match="is still training .*; calibrate it when training ends"):
            cal.calibrate_run(run, rule="max-ham-loss", target=0.1, data_dir=data, device="cpu")
    assert not (run / cal.CALIBRATION_FILE).exists()
    assert cal.calibrate_run(run, rule="max-ham-loss", target=0.1, data_dir=data, device="cpu").rule == "max-ham-loss"
