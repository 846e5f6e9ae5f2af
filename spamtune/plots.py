"""The run's pictures: ``curves.png`` (training), and ``roc.png``, ``pr.png`` and the
reliability diagram ``calibration.png`` (evaluation).

Drawn with matplotlib's Agg canvas directly: no pyplot, no display, no global backend state.
The curves follow the book's figures 6.16 and 6.17 (examples seen below, epochs on a second
axis above).
"""

from __future__ import annotations

from pathlib import Path

from spamtune.fsutil import atomic_path


def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def plot_curves(records: list[dict], n_train: int, path: str | Path) -> Path:
    """Write the two panels for ``metrics.jsonl`` records (one per evaluation)."""
    fig = _figure((10, 4))
    seen = [r["examples_seen"] for r in records]
    for ax, key, title in zip(fig.subplots(1, 2), ("loss", "accuracy"), ("Loss", "Accuracy")):
        ax.plot(seen, [r[f"train_{key}"] for r in records], marker="o", label=f"Training {title.lower()}")
        ax.plot(seen, [r[f"validation_{key}"] for r in records], marker="o", linestyle="-.", label=f"Validation {title.lower()}")
        ax.set_xlabel("Examples seen")
        ax.set_ylabel(title)
        ax.legend()
        epochs = ax.secondary_xaxis("top", functions=(lambda x: x / n_train, lambda e: e * n_train))
        epochs.set_xlabel("Epochs")
    return _save(fig, path)


def plot_roc(fpr: list[float], tpr: list[float], auc: float | None, point: tuple[float, float, float], path: str | Path) -> Path:
    """ROC curve (false-positive rate against spam recall) with the run's operating point
    ``(fpr, recall, threshold)`` marked."""
    ax = _figure((5, 5)).subplots()
    ax.step(fpr, tpr, where="post", label=f"ROC (AUC {auc:.4f})" if auc is not None else "ROC")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.plot(point[0], point[1], marker="o", color="red", label=f"threshold {point[2]:.3g}")
    ax.set(xlabel="False-positive rate (ham marked spam)", ylabel="Spam recall", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower right")
    return _save(ax.figure, path)


def plot_pr(recall: list[float], precision: list[float], ap: float | None, point: tuple[float, float, float], path: str | Path) -> Path:
    """Precision against spam recall with the operating point ``(recall, precision, threshold)``."""
    ax = _figure((5, 5)).subplots()
    ax.step(recall, precision, where="post", label=f"PR (average precision {ap:.4f})" if ap is not None else "PR")
    ax.plot(point[0], point[1], marker="o", color="red", label=f"threshold {point[2]:.3g}")
    ax.set(xlabel="Spam recall", ylabel="Precision", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower left")
    return _save(ax.figure, path)


def plot_reliability(bins: list, ece: float, path: str | Path, bins_before: list | None = None, ece_before: float | None = None) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin (``ReliabilityBin``s),
    the diagonal being perfect calibration; optionally the uncalibrated model's beside it."""
    ax = _figure((5, 5)).subplots()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    series = [(bins_before, ece_before, "before temperature scaling", "s")] if bins_before else []
    series.append((bins, ece, "calibrated" if bins_before else "model", "o"))
    for table, value, name, marker in series:
        used = [b for b in table if b.count]
        ax.plot([b.confidence for b in used], [b.accuracy for b in used], marker=marker, label=f"{name} (ECE {value:.4f})")
    ax.set(xlabel="Confidence (top-label probability)", ylabel="Accuracy", xlim=(0, 1.01), ylim=(0, 1.01))
    ax.legend(loc="upper left")
    return _save(ax.figure, path)


ROC_FILE, PR_FILE, RELIABILITY_FILE = "roc.png", "pr.png", "calibration.png"


def plot_binary_evaluation(out_dir: str | Path, is_spam: list[bool], probs, positive_index: int, threshold: float, probs_before=None) -> list[Path]:
    """``roc.png``, ``pr.png`` and ``calibration.png`` for class probabilities ``[n, 2]``
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
