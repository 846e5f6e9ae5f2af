"""Prepared splits on disk, and turning token lists into padded batches.

A split file is a UTF-8 CSV with the columns ``label`` (class index) and ``text``;
``labels.json`` maps label names to those indices. The csv module reads them (not pandas),
so training and prediction start without importing pandas.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from spamtune import paths
from spamtune.errors import SpamtuneError
from spamtune.fsutil import atomic_path, read_json

SPLIT_COLUMNS = ("label", "text")
# The longest text a split file holds, in characters: the csv module's field limit when one is
# read back. ``spamtune prepare`` refuses a longer text rather than write splits nothing can read.
MAX_TEXT_CHARS = 1 << 24


@dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def read_split(path: str | Path) -> Split:
    path = Path(path)
    if not path.is_file():
        raise SpamtuneError(f"split file not found: {path.absolute()}; run `spamtune prepare` first, or {paths.ELSEWHERE}")
    texts, labels = [], []
    csv.field_size_limit(MAX_TEXT_CHARS)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not set(SPLIT_COLUMNS) <= set(reader.fieldnames):
                raise SpamtuneError(f"{path} is not a spamtune split (needs columns {', '.join(SPLIT_COLUMNS)})")
            for row in reader:
                texts.append(row["text"])
                labels.append(int(row["label"]))
    except (ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise SpamtuneError(f"{path} is not a valid split file: {exc}") from None
    return Split(texts, labels)


def write_split(path: str | Path, split: Split) -> Path:
    """Atomically write a split CSV (RFC 4180 quoting keeps commas, quotes and newlines intact)."""
    with atomic_path(path) as tmp:
        write_split_into(tmp, split)
    return Path(path)


def write_split_into(path: Path, split: Split) -> None:
    """Write a split CSV to ``path`` itself: a temporary that the caller renames into place."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SPLIT_COLUMNS)
        writer.writerows(zip(split.labels, split.texts))


def read_label_map(root: str | Path) -> dict[str, int]:
    """``labels.json`` of a data root: label name -> class index."""
    data = read_json(paths.labels_file(Path(root)), "label map (run `spamtune prepare` first)")
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or len(labels) < 2:
        raise SpamtuneError(f"{paths.labels_file(Path(root))} holds no label mapping")
    return {str(k): int(v) for k, v in labels.items()}


def pad_batch(seqs: list[list[int]], pad_id: int, device="cpu"):
    """Right-pad token lists to the longest one: ``(input_ids [b, t], lengths [b])``."""
    import torch  # here, so that `spamtune prepare` does not pay for importing torch

    lengths = [len(s) for s in seqs]
    width = max(lengths)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return ids.to(device), torch.as_tensor(lengths, dtype=torch.long).to(device)


def sorted_batches(
    lengths: list[int], batch_size: int, call_cost: int | None = None, row_counts: set[int] | None = None,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Index batches of similar length (longest first), so each pads only to its own longest.

    Without ``call_cost`` every batch but the last holds ``batch_size`` rows. With it, the sorted
    rows are cut where the padding of a full batch would cost more than one more forward call:
    a batch is taken to cost ``call_cost + rows * longest`` (in token positions; ``call_cost`` is
    what a call costs beyond its tokens, on a CPU mostly reading every weight once), and the cuts
    minimise the sum (an exact dynamic programme, O(n * batch_size)). For a large sorted chunk
    that changes little; for a few dozen texts of mixed lengths (what a service's forward pass
    holds) it avoids padding short messages to the longest one, which costs more than twice
    the compute of the messages themselves. ``row_counts`` (with ``call_cost``; it must hold 1)
    are the only batch sizes allowed. ``max_tokens`` (without ``call_cost``) also ends a batch
    before its rows times its longest would exceed that many tokens (a batch holds one row at
    least).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if max_tokens is not None and call_cost is None:
        batches, start = [], 0
        while start < len(order):
            rows = max(1, min(batch_size, max_tokens // max(lengths[order[start]], 1)))
            batches.append(order[start : start + rows])
            start += rows
        return batches
    if call_cost is None or len(order) <= 1:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    longest = [lengths[i] for i in order]  # descending: row i is the longest of a batch starting there
    n = len(order)
    best = [0] * (n + 1)  # best[j]: the least cost of the first j rows
    cut = [0] * (n + 1)  # cut[j]: where the last batch of those j rows starts
    for j in range(1, n + 1):
        # Ties go to the smallest start, the widest batch: fewer calls for the same cost.
        best[j], cut[j] = min(
            (best[i] + call_cost + (j - i) * longest[i], i)
            for i in range(max(0, j - batch_size), j)
            if row_counts is None or j - i in row_counts
        )  # fmt: skip
    bounds, j = [], n
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    return [order[a:b] for a, b in reversed(bounds)]


def bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random, bucket_batches: int = 20):
    """Shuffled training batches of similar length.

    Shuffle all examples, sort each window of ``bucket_batches`` batches by length and cut it
    into batches, then shuffle the batch order: little padding, yet a different mix each epoch.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
