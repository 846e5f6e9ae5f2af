"""Calibrated probabilities and a chosen operating point for a fine-tuned run.

A classifier trained with cross-entropy on a small split is usually over- or under-confident,
and its 0.5 decision point says nothing about how much legitimate mail it loses. Both are
fixed here, on the validation split only (the test split stays untouched for reporting):

* **temperature scaling** (Guo et al., 2017): one scalar ``T`` divides the logits, fitted by
  minimising the validation negative log-likelihood. It changes no ranking (ROC-AUC, PR-AUC
  and the argmax stay the same), only how far the probabilities are from 0 and 1;
* **the expected calibration error** (ECE): the top-label confidence is cut into 15 equal-width
  bins, and ECE is the share-weighted mean gap between each bin's confidence and accuracy;
* **the decision threshold** on the calibrated spam probability, chosen for a target: at most
  a given share of validation ham marked spam (``max-ham-loss``), an explicit value, or the
  least expected cost for a given cost ratio of a lost ham to a missed spam.

The chosen temperature and threshold live in the run folder as ``calibration.json``.
Nothing here prints; functions return values and raise ``SpamtuneError`` for bad input.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from spamtune.errors import OptionError, SpamtuneError, SpamtuneUsageError, SpamtuneWarning
from spamtune.fsutil import atomic_write_json, read_json
from spamtune.metrics import binary_roc_auc
from spamtune.runs import CALIBRATION_FILE
CALIBRATION_FORMAT = "spamtune-calibration/1"
ECE_BINS = 15
DEFAULT_THRESHOLD = 0.5  # without a calibration: the argmax of two classes
RULES = ("max-ham-loss", "threshold", "cost-ratio")
# The search range of the temperature. NLL is convex in 1/T, so a bracketed 1-D search finds
# its minimum; the bounds only matter for degenerate sets (perfectly separated validation data
# drives T towards 0), where they stop the probabilities from collapsing to exactly 0 and 1.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def threshold_refusal(label_names: Sequence[str]) -> str | None:
    """Why a spam threshold cannot apply to a run of these classes (``{option}`` where its name
    goes), or None when it can: a run of more than two classes decides by the most probable
    class, so a threshold given for it would be silently ignored."""
    if len(label_names) == 2:
        return None
    return (
        f"{{option}} cannot apply: the run has {len(label_names)} classes ({', '.join(label_names)}) and decides "
        "by the most probable one; a spam threshold is for two-class (spam/ham) runs"
    )


def check_calibration_applies(label_names: Sequence[str]) -> None:
    """Refuse to choose an operating point for a run of more than two classes: it decides by the
    most probable class, so a spam threshold chosen for it would be stored and never applied, and
    its figures would count every other class as ham."""
    if len(label_names) != 2:
        raise SpamtuneUsageError(
            f"cannot calibrate: the run has {len(label_names)} classes ({', '.join(label_names)}) and decides by the "
            "most probable one; calibration and operating points are defined for two-class (spam/ham) runs "
            "(training fitted this run's temperature on validation)"
        )


def check_threshold_applies(label_names: Sequence[str]) -> None:
    """``OptionError`` (a usage error) for a threshold given to a run that cannot use one."""
    reason = threshold_refusal(label_names)
    if reason is not None:
        raise OptionError("threshold", reason)


# --------------------------------------------------------------------------- temperature


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    return F.cross_entropy(logits.double() / temperature, labels.long()).item()


def fit_temperature(logits: torch.Tensor, labels: Sequence[int] | torch.Tensor, iterations: int = 80) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on ``labels``.

    ``NLL(1/T)`` is convex (a log-sum-exp of linear functions minus a linear one), hence
    unimodal in ``log T``: a golden-section search over ``log T`` is exact to float precision
    after ~80 steps, needs no learning rate and cannot diverge, unlike gradient descent on
    a handful of hundred points. Returns 1.0 for an empty set, and for a set of one class:
    its NLL falls all the way to a bound of the search (every message is that class, with
    certainty), a temperature that would squash or saturate every later probability.
    """
    logits = torch.as_tensor(logits).detach().double().cpu()
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    if logits.ndim != 2 or len(logits) != len(labels):
        raise SpamtuneError(f"logits {list(logits.shape)} and {len(labels)} labels do not match")
    if not torch.isfinite(logits).all():
        raise SpamtuneError("cannot calibrate: the model gives non-finite logits on the validation split")
    if len(labels.unique()) < 2:
        return 1.0

    def loss(log_t: float) -> float:
        return F.cross_entropy(logits / math.exp(log_t), labels).item()

    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss(b)
    best = (low + high) / 2
    # T = 1 (no change) wins any tie: never report a "calibration" that does not help.
    return math.exp(best) if loss(best) < loss(0.0) else 1.0


def calibrated_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` in float64 (so probabilities near 1 stay apart)."""
    return torch.softmax(torch.as_tensor(logits).double() / temperature, dim=-1)


# --------------------------------------------------------------------------- ECE


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    confidence: float  # mean top-label probability in the bin (0 when empty)
    accuracy: float  # share of the bin whose top label is right (0 when empty)


def reliability_bins(probs: torch.Tensor, labels: Sequence[int], bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """The top-label reliability table: bin ``i`` holds confidences in ``(i/bins, (i+1)/bins]``
    (the first bin includes 0)."""
    probs = torch.as_tensor(probs).double()
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    confidence, predicted = probs.max(dim=1) if len(probs) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
    correct = (predicted == labels_t).double()
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    table = []
    for i in range(bins):
        members = index == i
        count = int(members.sum())
        table.append(ReliabilityBin(
            low=i / bins, high=(i + 1) / bins, count=count,
            confidence=confidence[members].mean().item() if count else 0.0,
            accuracy=correct[members].mean().item() if count else 0.0,
        ))  # fmt: skip
    return table


def expected_calibration_error(probs: torch.Tensor, labels: Sequence[int], bins: int = ECE_BINS) -> float:
    """ECE: ``sum_b (n_b / n) |accuracy_b - confidence_b|`` over equal-width confidence bins."""
    table = reliability_bins(probs, labels, bins)
    n = sum(b.count for b in table)
    return sum(b.count * abs(b.accuracy - b.confidence) for b in table) / n if n else 0.0


# --------------------------------------------------------------------------- binary figures


@dataclass(frozen=True)
class OperatingPoint:
    """Figures of the rule "spam when p_spam >= threshold" on a labelled set."""

    threshold: float
    true_positives: int  # spam marked spam
    false_positives: int  # ham marked spam: lost legitimate messages
    true_negatives: int
    false_negatives: int  # spam let through

    @property
    def n_ham(self) -> int:
        return self.false_positives + self.true_negatives

    @property
    def n_spam(self) -> int:
        return self.true_positives + self.false_negatives

    @property
    def false_positive_rate(self) -> float | None:
        return self.false_positives / self.n_ham if self.n_ham else None

    @property
    def spam_recall(self) -> float | None:
        return self.true_positives / self.n_spam if self.n_spam else None

    @property
    def precision(self) -> float | None:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else None

    @property
    def f1(self) -> float | None:
        """``2 TP / (2 TP + FP + FN)``: the harmonic mean of precision and recall, defined
        (as 0) even when nothing is flagged; None only when there is neither spam nor a flag."""
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / denominator if denominator else None

    def confusion(self) -> list[list[int]]:
        """``[[ham→ham, ham→spam], [spam→ham, spam→spam]]``: rows true, columns predicted."""
        return [[self.true_negatives, self.false_positives], [self.false_negatives, self.true_positives]]

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "false_positive_rate": self.false_positive_rate,
            "spam_recall": self.spam_recall,
            "precision": self.precision,
            "f1": self.f1,
            "confusion_matrix": self.confusion(),
            "n_ham": self.n_ham,
            "n_spam": self.n_spam,
        }


def operating_point(is_spam: Sequence[bool], p_spam: Sequence[float], threshold: float) -> OperatingPoint:
    tp = fp = tn = fn = 0
    for spam, p in zip(is_spam, p_spam):
        flagged = p >= threshold
        if spam:
            tp, fn = tp + flagged, fn + (not flagged)
        else:
            fp, tn = fp + flagged, tn + (not flagged)
    return OperatingPoint(threshold, tp, fp, tn, fn)


def _cumulative_counts(is_spam: Sequence[bool], scores: Sequence[float]) -> list[tuple[float, int, int]]:
    """``(score, spam flagged, ham flagged)`` for "flag score >= s" at every distinct score,
    highest score first (tied scores are flagged together, as any threshold must)."""
    pairs = sorted(zip(scores, is_spam), key=lambda pair: -pair[0])
    out, tp, fp = [], 0, 0
    for i, (score, spam) in enumerate(pairs):
        tp, fp = tp + bool(spam), fp + (not spam)
        if i + 1 == len(pairs) or pairs[i + 1][0] != score:
            out.append((score, tp, fp))
    return out


def roc_curve(is_spam: Sequence[bool], scores: Sequence[float]) -> tuple[list[float], list[float]]:
    """``(false-positive rates, spam recalls)`` from (0, 0) to (1, 1), one point per distinct score."""
    n_spam = sum(map(bool, is_spam))
    n_ham = len(is_spam) - n_spam
    fpr, tpr = [0.0], [0.0]
    for _, tp, fp in _cumulative_counts(is_spam, scores):
        fpr.append(fp / n_ham if n_ham else 0.0)
        tpr.append(tp / n_spam if n_spam else 0.0)
    return fpr, tpr


def precision_recall_curve(is_spam: Sequence[bool], scores: Sequence[float]) -> tuple[list[float], list[float]]:
    """``(recalls, precisions)``, one point per distinct score from the highest down."""
    n_spam = sum(map(bool, is_spam))
    recall, precision = [], []
    for _, tp, fp in _cumulative_counts(is_spam, scores):
        recall.append(tp / n_spam if n_spam else 0.0)
        precision.append(tp / (tp + fp))
    return recall, precision


def average_precision(is_spam: Sequence[bool], scores: Sequence[float]) -> float | None:
    """PR-AUC as average precision: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct scores
    (scikit-learn's ``average_precision_score``: no interpolation). None without spam."""
    n_spam = sum(map(bool, is_spam))
    if not n_spam:
        return None
    total, last_recall = 0.0, 0.0
    for recall, precision in zip(*precision_recall_curve(is_spam, scores)):
        total += (recall - last_recall) * precision
        last_recall = recall
    return total


def binary_report(is_spam: Sequence[bool], p_spam: Sequence[float], threshold: float, probs: torch.Tensor | None = None) -> dict:
    """Every figure of a spam/ham operating point: at the threshold, and threshold-free.

    ``probs`` (``[n, 2]``, columns ham/spam as the labels) gives the ECE; without it the ECE is
    computed from ``p_spam`` as a two-column table.
    """
    if probs is None:
        p = torch.tensor(list(p_spam), dtype=torch.float64)
        probs = torch.stack([1 - p, p], dim=1)
    labels = [int(bool(s)) for s in is_spam]
    point = operating_point(is_spam, p_spam, threshold)
    return {
        **point.to_dict(),
        "roc_auc": binary_roc_auc(list(map(bool, is_spam)), list(p_spam)),
        "pr_auc": average_precision(is_spam, p_spam),
        "ece": expected_calibration_error(probs, labels),
    }


# --------------------------------------------------------------------------- threshold search


@dataclass(frozen=True)
class ThresholdChoice:
    """A decision threshold and how it was chosen, with its figures on the validation split."""

    rule: str  # "max-ham-loss", "threshold" or "cost-ratio"
    target: float  # the max false-positive rate, the threshold itself, or the cost ratio
    threshold: float
    validation: OperatingPoint


def _between(low: float | None, high: float) -> float:
    """A threshold that flags ``high`` but not ``low``: their midpoint, so that a new message
    scoring near either side of the validation boundary is decided by the larger gap."""
    return high if low is None else (low + high) / 2


def _choose(is_spam: Sequence[bool], p_spam: Sequence[float], feasible, cost) -> float:
    """The threshold of the least-cost feasible "flag score >= s" point (flag-nothing included);
    among equal costs, the one flagging least."""
    points = _cumulative_counts(is_spam, p_spam)
    # Flag nothing: above every score (1.0 when the top score is already 1.0: the ">=" rule
    # cannot go higher, and such scores are flagged whatever the threshold).
    top = points[0][0] if points else 0.0
    best = (cost(0, 0), 0, min(1.0, (top + 1.0) / 2) if top < 1.0 else 1.0)
    for i, (score, tp, fp) in enumerate(points):
        if not feasible(tp, fp):
            continue
        below = points[i + 1][0] if i + 1 < len(points) else None
        key = (cost(tp, fp), i + 1, _between(below, score))
        if key[:2] < best[:2]:
            best = key
    return best[2]


def threshold_for_max_ham_loss(is_spam: Sequence[bool], p_spam: Sequence[float], max_fpr: float) -> ThresholdChoice:
    """The threshold with the highest spam recall whose false-positive rate on the given ham
    stays at or under ``max_fpr``; among thresholds with that recall, the fewest false positives.

    A target under ``1 / number of ham`` cannot be told apart from zero on this set, so it is
    refused with the smallest rate that can be measured, rather than silently met with a
    threshold whose real rate is unknown.
    """
    if not 0.0 <= max_fpr < 1.0 or math.isnan(max_fpr):
        raise SpamtuneUsageError(f"--max-ham-loss must be at least 0% and under 100% (got {max_fpr:.4%})")
    n_ham = sum(1 for s in is_spam if not s)
    if not n_ham:
        raise SpamtuneError("cannot choose a threshold for a ham loss: the validation split has no ham")
    if max_fpr < 1 / n_ham:
        raise SpamtuneError(
            f"--max-ham-loss {max_fpr:.3%} is not measurable on {n_ham:,} validation ham: the smallest measurable "
            f"false-positive rate is 1/{n_ham:,} = {1 / n_ham:.2%}; ask for at least that, or give validation more ham "
            "(`spamtune prepare --balance none` keeps every message; a larger validation fraction in --split)"
        )
    allowed = math.floor(max_fpr * n_ham + 1e-9)  # false positives the target allows
    threshold = _choose(is_spam, p_spam, lambda tp, fp: fp <= allowed, lambda tp, fp: (-tp, fp))
    return ThresholdChoice("max-ham-loss", max_fpr, threshold, operating_point(is_spam, p_spam, threshold))


def threshold_for_cost_ratio(is_spam: Sequence[bool], p_spam: Sequence[float], ratio: float) -> ThresholdChoice:
    """The threshold with the least total cost on the given set, counting a lost ham as
    ``ratio`` missed spams: minimises ``ratio * false positives + false negatives``."""
    if not ratio > 0 or math.isinf(ratio):
        raise SpamtuneUsageError(f"--cost-ratio must be a positive number (got {ratio})")
    n_spam = sum(map(bool, is_spam))
    threshold = _choose(is_spam, p_spam, lambda tp, fp: True, lambda tp, fp: ratio * fp + (n_spam - tp))
    return ThresholdChoice("cost-ratio", ratio, threshold, operating_point(is_spam, p_spam, threshold))


def fixed_threshold(is_spam: Sequence[bool], p_spam: Sequence[float], threshold: float) -> ThresholdChoice:
    if not 0.0 <= threshold <= 1.0:
        raise SpamtuneUsageError(f"--threshold must be between 0 and 1 (got {threshold})")
    return ThresholdChoice("threshold", threshold, threshold, operating_point(is_spam, p_spam, threshold))


def parse_rate(text: str) -> float:
    """``"0.5%"`` -> 0.005, ``"0.01"`` -> 0.01: a rate as a percentage or a fraction."""
    value = text.strip()
    try:
        rate = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise SpamtuneUsageError(f"not a rate: {text!r} (write e.g. 0.5% or 0.005)") from None
    if not 0.0 <= rate < 1.0:
        raise SpamtuneUsageError(f"a rate must be at least 0% and under 100%, got {text!r}")
    return rate


# --------------------------------------------------------------------------- the run's record


@dataclass
class Calibration:
    """What ``calibration.json`` holds: how to turn logits into a decision, and the evidence."""

    temperature: float
    threshold: float
    rule: str
    target: float
    validation: dict  # n, nll and ECE before/after, and the operating point's figures

    def to_dict(self) -> dict:
        return {"format": CALIBRATION_FORMAT, **asdict(self)}

    def describe(self) -> str:
        """How the threshold was chosen: ``max-ham-loss 1.00%``, ``threshold 0.5``, ``cost-ratio 10``."""
        if self.rule == "max-ham-loss":
            return f"max-ham-loss {self.target:.2%}"
        return f"{self.rule} {self.target:g}"


def calibrate_logits(
    logits: torch.Tensor,
    labels: Sequence[int],
    positive_index: int,
    *,
    rule: str = "threshold",
    target: float = 0.5,
    temperature: float | None = None,
) -> Calibration:
    """Fit the temperature (unless given) and choose the threshold on validation logits.

    ``rule``/``target``: ``max-ham-loss`` with the highest false-positive rate allowed,
    ``threshold`` with the threshold itself, or ``cost-ratio`` with the cost of a lost ham in
    missed spams. Thresholds apply to the calibrated probability of ``positive_index``.

    Logits of more than two classes get the temperature alone (NLL and top-label ECE over all
    classes): such a run decides by the most probable class, so it has no operating point, and
    the record keeps the threshold 0.5 that nothing applies.
    """
    if rule not in RULES:
        raise SpamtuneUsageError(f"unknown threshold rule {rule!r}; choose one of {', '.join(RULES)}")
    logits = torch.as_tensor(logits).detach().double().cpu()
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    two_classes = logits.ndim == 2 and logits.shape[1] == 2
    if not two_classes and (rule, target) != ("threshold", DEFAULT_THRESHOLD):
        raise SpamtuneUsageError(f"a {rule} operating point needs two classes; these logits have {logits.shape[-1]}")
    fitted = fit_temperature(logits, labels_t) if temperature is None else float(temperature)
    before = calibrated_probabilities(logits, 1.0)
    after = calibrated_probabilities(logits, fitted)
    validation = {
        "n": len(labels_t),
        "nll_before": nll(logits, labels_t, 1.0) if len(labels_t) else None,
        "nll_after": nll(logits, labels_t, fitted) if len(labels_t) else None,
        "ece_before": expected_calibration_error(before, labels_t.tolist()),
        "ece_after": expected_calibration_error(after, labels_t.tolist()),
    }
    if not two_classes:
        return Calibration(fitted, DEFAULT_THRESHOLD, rule, target, validation)
    is_spam = [y == positive_index for y in labels_t.tolist()]
    p_spam = after[:, positive_index].tolist()
    choose = {"max-ham-loss": threshold_for_max_ham_loss, "cost-ratio": threshold_for_cost_ratio, "threshold": fixed_threshold}
    choice = choose[rule](is_spam, p_spam, target)
    return Calibration(fitted, choice.threshold, rule, target, {**validation, **choice.validation.to_dict()})


def write_calibration(run_dir: str | Path, calibration: Calibration) -> Path:
    return atomic_write_json(Path(run_dir) / CALIBRATION_FILE, calibration.to_dict())


def _shown(value) -> str:
    """A hand-edited value as JSON, cut short: one line of error, whatever the file holds."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:40] + "..."


def read_calibration(run_dir: str | Path) -> Calibration | None:
    """The run's calibration, or None for a run that has none (made before calibration existed)."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    data = read_json(path, "calibration")
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise SpamtuneError(f"{path} is not a spamtune calibration (format {CALIBRATION_FORMAT!r})")
    missing = [key for key in ("temperature", "threshold", "rule", "target") if key not in data]
    if missing:
        raise SpamtuneError(f"{path} is incomplete: no {', '.join(missing)}")
    # JSON numbers only: float() would take "0.5" and, worse, false for a threshold of 0 that
    # marks every message spam.
    for key in ("temperature", "threshold", "target"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpamtuneError(f"{path}: {key} must be a finite number, not {_shown(value)}")
    if data["rule"] not in RULES:
        raise SpamtuneError(f"{path}: rule must be one of {', '.join(RULES)}, not {_shown(data['rule'])}")
    validation = data.get("validation") or {}
    if not isinstance(validation, dict):
        raise SpamtuneError(f"{path}: validation must be an object, not {_shown(validation)}")
    calibration = Calibration(float(data["temperature"]), float(data["threshold"]), data["rule"], float(data["target"]), dict(validation))
    if not (MIN_TEMPERATURE <= calibration.temperature <= MAX_TEMPERATURE and 0.0 <= calibration.threshold <= 1.0):
        raise SpamtuneError(f"{path} holds an impossible temperature or threshold")
    return calibration


# --------------------------------------------------------------------------- a run folder


def calibrate_run(
    run_dir: str | Path,
    *,
    rule: str = "threshold",
    target: float = 0.5,
    data_dir: str | Path | None = None,
    device: str = "auto",
    refit_temperature: bool = True,
    force: bool = False,
) -> Calibration:
    """Fit the run's temperature on its validation split, choose its threshold by ``rule``,
    and store both as ``calibration.json`` in the run folder (atomically).

    Splits prepared differently from the run's are refused unless ``force`` (then a
    ``SpamtuneWarning`` says so), as ``evaluate`` refuses them: their validation split may hold the run's training messages, on which the
    model is surest, and a threshold chosen there loses more ham than it says.

    ``refit_temperature=False`` keeps the temperature already stored (changing only the
    operating point); a run without one is fitted anyway. A run of more than two classes is
    refused (``check_calibration_applies``): it has no operating point to choose.
    """
    from spamtune.checkpoint import load_classifier, load_classifier_config
    from spamtune.device import resolve_device
    from spamtune.evaluate import check_data_fingerprint, model_logits, read_splits, run_data_root, run_precision
    from spamtune.paths import split_file
    from spamtune.run_catalog import is_in_use
    from spamtune.split_lock import reading_splits

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpamtuneError(f"run folder not found: {run_dir}")
    check_calibration_applies(load_classifier_config(run_dir).label_names)  # before the weights load
    if is_in_use(run_dir):  # a resumed run: its weights are not final, and its end writes calibration.json
        raise SpamtuneError(
            f"{run_dir} is still training (a process holds its lock); calibrate it when training ends, "
            "which replaces calibration.json"
        )
    dev = resolve_device(device)
    model, cfg = load_classifier(run_dir, dev)
    root = run_data_root(run_dir, data_dir)
    with reading_splits(root):  # the split checked is the split read
        for message in check_data_fingerprint(run_dir, root, force):  # with force: said, not refused
            warnings.warn(message, SpamtuneWarning)
        validation = read_splits(root, "validation", cfg)["validation"]
    if not len(validation):  # else a record "calibrated" on nothing, with a temperature of 1
        raise SpamtuneError(f"cannot calibrate: the validation split {split_file(root, 'validation')} holds no messages")
    logits = model_logits(model, cfg, validation.texts, precision=run_precision(run_dir, dev), batch_size=64)
    return calibrate_and_store(run_dir, logits, validation.labels, cfg.labels[cfg.positive_label], rule=rule, target=target, refit_temperature=refit_temperature)


def calibrate_and_store(
    run_dir: str | Path,
    logits: torch.Tensor,
    labels: Sequence[int],
    positive_index: int,
    *,
    rule: str = "threshold",
    target: float = 0.5,
    refit_temperature: bool = True,
) -> Calibration:
    """``calibrate_logits`` on validation logits, written into the run folder."""
    previous = None if refit_temperature else read_calibration(run_dir)
    calibration = calibrate_logits(
        logits, labels, positive_index, rule=rule, target=target, temperature=previous.temperature if previous else None
    )
    write_calibration(run_dir, calibration)
    return calibration
