"""The run's pictures, as SVG (``spamtune.charts``): ``curves.svg`` (training), and
``roc.svg``, ``pr.svg`` and the reliability diagram ``calibration.svg`` (evaluation).

The curves follow the book's figures 6.16 and 6.17 (examples seen below, epochs on a second
axis above).
"""

from __future__ import annotations

from pathlib import Path

from spamtune.charts import Chart, render_svg
from spamtune.fsutil import atomic_write_text

ROC_FILE, PR_FILE, RELIABILITY_FILE = "roc.svg", "pr.svg", "calibration.svg"
UNIT_RANGE = (-0.01, 1.01)


def _save(charts: list[Chart], path: str | Path) -> Path:
    atomic_write_text(path, render_svg(charts))
    return Path(path)


def plot_curves(records: list[dict], n_train: int, path: str | Path) -> Path:
    """Write the two panels for ``metrics.jsonl`` records (one per evaluation)."""
    seen = [r["examples_seen"] for r in records]
    epochs = ("Epochs", lambda x: x / n_train, lambda e: e * n_train)
    panels = []
    for key, title in (("loss", "Loss"), ("accuracy", "Accuracy")):
        chart = Chart("Examples seen", title, top_axis=epochs)
        chart.plot(seen, [r[f"train_{key}"] for r in records], f"Training {title.lower()}", marker="circle")
        chart.plot(seen, [r[f"validation_{key}"] for r in records], f"Validation {title.lower()}", marker="circle", dash="dashdot")
        panels.append(chart)
    return _save(panels, path)


def plot_roc(fpr: list[float], tpr: list[float], auc: float | None, point: tuple[float, float, float], path: str | Path) -> Path:
    """ROC curve (false-positive rate against spam recall) with the run's operating point
    ``(fpr, recall, threshold)`` marked."""
    chart = Chart("False-positive rate (ham marked spam)", "Spam recall", UNIT_RANGE, UNIT_RANGE, legend="lower right")
    chart.plot(fpr, tpr, f"ROC (AUC {auc:.4f})" if auc is not None else "ROC", step=True)
    chart.plot([0, 1], [0, 1], "chance", colour="grey", dash="dotted")
    chart.plot([point[0]], [point[1]], f"threshold {point[2]:.3g}", colour="red", marker="circle", line=False)
    return _save([chart], path)


def plot_pr(recall: list[float], precision: list[float], ap: float | None, point: tuple[float, float, float], path: str | Path) -> Path:
    """Precision against spam recall with the operating point ``(recall, precision, threshold)``."""
    chart = Chart("Spam recall", "Precision", UNIT_RANGE, UNIT_RANGE, legend="lower left")
    chart.plot(recall, precision, f"PR (average precision {ap:.4f})" if ap is not None else "PR", step=True)
    chart.plot([point[0]], [point[1]], f"threshold {point[2]:.3g}", colour="red", marker="circle", line=False)
    return _save([chart], path)


def plot_reliability(bins: list, ece: float, path: str | Path, bins_before: list | None = None, ece_before: float | None = None) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin (``ReliabilityBin``s),
    the diagonal being perfect calibration; optionally the uncalibrated model's beside it."""
    chart = Chart("Confidence (top-label probability)", "Accuracy", (0, 1.01), (0, 1.01), legend="upper left")
    chart.plot([0, 1], [0, 1], "perfect calibration", colour="grey", dash="dotted")
    series = [(bins_before, ece_before, "before temperature scaling", "square")] if bins_before else []
    series.append((bins, ece, "calibrated" if bins_before else "model", "circle"))
    for table, value, name, marker in series:
        used = [b for b in table if b.count]
        chart.plot([b.confidence for b in used], [b.accuracy for b in used], f"{name} (ECE {value:.4f})", marker=marker)
    return _save([chart], path)


def plot_binary_evaluation(out_dir: str | Path, is_spam: list[bool], probs, positive_index: int, threshold: float, probs_before=None) -> list[Path]:
    """``roc.svg``, ``pr.svg`` and ``calibration.svg`` for class probabilities ``[n, 2]``
    (``probs_before``: the same without temperature scaling, drawn beside in the diagram)."""
    from spamtune import calibration as cal
    from spamtune.metrics import binary_roc_auc

    out_dir = Path(out_dir)
    p_spam = probs[:, positive_index].tolist()
    labels = [positive_index if s else 1 - positive_index for s in is_spam]
    point = cal.operating_point(is_spam, p_spam, threshold)
    fpr, tpr = cal.roc_curve(is_spam, p_spam)
    recall, precision = cal.precision_recall_curve(is_spam, p_spam)
    before = {}
    if probs_before is not None:
        before = {"bins_before": cal.reliability_bins(probs_before, labels), "ece_before": cal.expected_calibration_error(probs_before, labels)}
    return [
        plot_roc(fpr, tpr, binary_roc_auc(is_spam, p_spam), (point.false_positive_rate or 0.0, point.spam_recall or 0.0, threshold), out_dir / ROC_FILE),
        plot_pr(recall, precision, cal.average_precision(is_spam, p_spam), (point.spam_recall or 0.0, point.precision or 1.0, threshold), out_dir / PR_FILE),
        plot_reliability(cal.reliability_bins(probs, labels), cal.expected_calibration_error(probs, labels), out_dir / RELIABILITY_FILE, **before),
    ]
