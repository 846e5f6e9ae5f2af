"""Classification figures without scikit-learn: accuracy, per-class precision / recall / F1,
the confusion matrix and ROC-AUC.

Plain Python over lists, so evaluation and training need no extra dependency. ROC-AUC is the
Mann-Whitney statistic computed from ranks (ties share their average rank), which equals the
area under the ROC curve exactly, including ties.
"""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    if not y_true:
        return 0.0
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> list[list[int]]:
    """``matrix[true][predicted]`` counts."""
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(y_true, y_pred):
        matrix[t][p] += 1
    return matrix


def per_class_scores(matrix: list[list[int]]) -> list[dict]:
    """Precision, recall, F1 and support of each class; 0.0 where a ratio has nothing to count
    (scikit-learn's ``zero_division=0``)."""
    scores = []
    for c in range(len(matrix)):
        true_pos = matrix[c][c]
        predicted = sum(row[c] for row in matrix)
        support = sum(matrix[c])
        precision = true_pos / predicted if predicted else 0.0
        recall = true_pos / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append({"precision": precision, "recall": recall, "f1": f1, "support": support})
    return scores


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``; equal values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def binary_roc_auc(is_positive: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve; None when one of the two classes is absent (it is undefined)."""
    n_pos = sum(1 for p in is_positive if p)
    n_neg = len(is_positive) - n_pos
    if not n_pos or not n_neg:
        return None
    ranks = average_ranks(scores)
    pos_rank_sum = sum(r for r, p in zip(ranks, is_positive) if p)
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_auc(y_true: Sequence[int], probs: Sequence[Sequence[float]]) -> float | None:
    """ROC-AUC from class probabilities ``[n, num_classes]``.

    Two classes: the AUC of class 1's probability. More: the mean of the one-vs-rest AUCs
    (scikit-learn's ``multi_class="ovr", average="macro"``). None if it is undefined.
    """
    num_classes = len(probs[0]) if probs else 0
    if num_classes == 2:
        return binary_roc_auc([t == 1 for t in y_true], [p[1] for p in probs])
    aucs = [binary_roc_auc([t == c for t in y_true], [p[c] for p in probs]) for c in range(num_classes)]
    if not aucs or any(a is None for a in aucs):
        return None
    return sum(aucs) / len(aucs)


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], probs: Sequence[Sequence[float]], label_names: list[str]
) -> dict:
    """Every figure ``spamtune evaluate`` shows, from true and predicted labels and the class
    probabilities (for ROC-AUC). ``per_class`` is keyed by label name; the confusion matrix's
    rows (true) and columns (predicted) follow ``labels``.
    """
    matrix = confusion_matrix(y_true, y_pred, len(label_names))
    return {
        "n": len(y_true),
        "accuracy": accuracy(y_true, y_pred),
        "roc_auc": roc_auc(y_true, probs),
        "labels": list(label_names),
        "per_class": dict(zip(label_names, per_class_scores(matrix))),
        "confusion_matrix": matrix,
    }
