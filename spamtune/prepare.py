"""Turning labelled texts into the train / validation / test splits that fine-tuning reads.

The default is the recipe of chapter 6 of *Build a Large Language Model (From Scratch)*, call for
call: undersample the majority class to the minority's size, shuffle, cut 70% / 10% / 20%.
The texts come from ``spamtune.labelled_texts``, which reads them (and says where its reading
of the SMS Spam Collection differs from the book's).

Nothing here prints: the functions return what they found and the CLI renders it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spamtune import __version__, paths
from spamtune.data import Split, write_split_into
from spamtune.errors import SpamtuneError, SpamtuneUsageError
from spamtune.fsutil import atomic_path, json_bytes, remove_temporaries_of, write_error
from spamtune.interrupts import interrupts_deferred
from spamtune.labelled_texts import STDIN, LabelledTexts
from spamtune.mail import READING_VERSION, UNREADABLE_LABEL
from spamtune.options import BALANCE_MODES, PrepareOptions
from spamtune.split_lock import RENAMING_MARK, renaming, replacing_splits
from spamtune.tokenizer import encode_texts

# The seeds pandas' sampling takes (numpy's RandomState): a negative one was an unexplained ValueError.
MAX_SEED = 2**32 - 1


@dataclass
class TokenLengths:
    """Token counts of a split's texts (GPT-2 BPE, no truncation)."""

    min: int
    median: float
    p95: float
    max: int


@dataclass
class PreparedSplits:
    source: LabelledTexts
    options: PrepareOptions
    splits: dict[str, Split]  # "train", "validation", "test"
    duplicates_dropped: int | None  # None unless options.dedupe
    rows_per_label_after_balance: int | None  # None with --balance none
    leakage: dict[str, int]  # "validation" / "test" -> how many of its texts also appear in train
    token_lengths: dict[str, TokenLengths]
    empty_texts_dropped: int = 0  # rows whose text is empty or only whitespace

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per split per label name (class-index order)."""
        out = {}
        for name, split in self.splits.items():
            per_index = Counter(split.labels)
            out[name] = {label: per_index[index] for label, index in self.source.label_map.items()}
        return out

    def record(self) -> dict:
        """What ``prepare.json`` holds: where the data came from, how it was cut, what came out."""
        src = self.source
        record = {
            "spamtune_version": __version__,
            "input": {
                "path": _recorded_path(src),
                "stream": src.stream,
                "sha256": src.sha256,
                "format": src.format,
                "text_col": src.text_col,
                "label_col": src.label_col,
                "rows": len(src.texts),
                "rows_per_label": src.label_counts(),
            },
            "options": asdict(self.options),
            "labels": src.label_map,
            "label_case": "folded" if src.label_case_folded else "kept",
            "label_spellings_merged": src.label_spellings_merged,
            "empty_texts_dropped": self.empty_texts_dropped,
            "duplicates_dropped": self.duplicates_dropped,
            "rows_per_label_after_balance": self.rows_per_label_after_balance,
            "counts": {name: {**per_label, "total": sum(per_label.values())} for name, per_label in self.counts().items()},
            "leakage_into_train": self.leakage,
            "token_lengths": {name: asdict(stats) for name, stats in self.token_lengths.items()},
        }
        if src.mail_sources is not None:
            record["input"]["mail_sources"] = [{**asdict(c), "kept": c.kept} for c in src.mail_sources]
            record["input"]["mail_reading"] = READING_VERSION
        return record


def _recorded_path(source: LabelledTexts) -> str:
    if str(source.path) == STDIN:
        return STDIN
    # A pipe's path (/dev/fd/63) resolves to no file at all, only to "pipe:[...]": kept as given.
    return str(source.path.absolute() if source.stream else source.path.resolve())


def parse_split(spec: str) -> tuple[float, float, float]:
    """``"0.7,0.1,0.2"`` -> train / validation / test fractions, checked."""
    parts = spec.split(",")
    try:
        fractions = tuple(float(part) for part in parts)
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise SpamtuneUsageError(f"--split takes three comma-separated fractions like 0.7,0.1,0.2, not {spec!r}")
    check_split(fractions)
    return fractions


def check_split(fractions: tuple[float, float, float]) -> None:
    if not all(0 < f < 1 for f in fractions):  # also refuses nan and inf
        raise SpamtuneUsageError(f"every --split fraction must be between 0 and 1, got {_show(fractions)}")
    if abs(sum(fractions) - 1) > 1e-6:
        raise SpamtuneUsageError(f"--split fractions must sum to 1, got {_show(fractions)} (sum {sum(fractions):g})")


def _show(fractions) -> str:
    return ",".join(f"{f:g}" for f in fractions)


def prepare_splits(source: LabelledTexts, options: PrepareOptions | None = None) -> PreparedSplits:
    """Dedupe (optional), balance, shuffle and split ``source``; measure what came out."""
    options = options or PrepareOptions()
    if options.balance not in BALANCE_MODES:
        raise SpamtuneUsageError(f"unknown balance mode {options.balance!r}; use one of {', '.join(BALANCE_MODES)}")
    check_split(options.split)
    if not 0 <= options.seed <= MAX_SEED:
        raise SpamtuneUsageError(f"--seed must be between 0 and {MAX_SEED} (got {options.seed})")

    if UNREADABLE_LABEL in source.label_map:
        rows = source.label_counts()[UNREADABLE_LABEL]
        raise SpamtuneError(
            f"{source.name} has the label {UNREADABLE_LABEL!r} ({rows:,} rows): `spamtune predict --mail` prints it for a "
            "message it cannot read, and a class of that name could not be told from one; rename the class"
        )
    frame = pd.DataFrame({"label": [source.label_map[name] for name in source.labels], "text": source.texts})
    # A row with no text teaches nothing and would be a zero-token example: it is dropped.
    has_text = frame["text"].str.strip() != ""
    empty_texts_dropped = int((~has_text).sum())
    frame = frame[has_text]
    if frame["label"].nunique() < 2:
        raise SpamtuneError(
            f"{source.name}: after dropping {empty_texts_dropped:,} rows with an empty text, "
            "fewer than two labels are left; a classifier needs at least two"
        )
    duplicates_dropped = None
    if options.dedupe:
        unique = frame.drop_duplicates(subset="text", keep="first")
        duplicates_dropped = len(frame) - len(unique)
        frame = unique

    rows_per_label = None
    if options.balance == "undersample":
        frame, rows_per_label = _undersample(frame, options.seed)
    # The book's random_split: shuffle every row, then cut by position.
    frame = frame.sample(frac=1, random_state=options.seed).reset_index(drop=True)
    if options.stratify or options.balance != "none":
        # Undersampling can leave far fewer rows than the file holds: the error says why.
        balanced = f" after --balance {options.balance} kept {rows_per_label:,} per label" if rows_per_label else ""
        splits = _cut(frame, options.split, options.stratify, balanced)
    else:
        # Without balancing, validation and test are to show the real class mix: cut per label,
        # unless the labels are too small to give every split a row that way (a tiny file).
        try:
            splits = _cut(frame, options.split, True)
        except SpamtuneError:
            splits = _cut(frame, options.split, False)
    rows_left = Counter(frame["label"])
    rows_read = source.label_counts()
    trained = set(splits["train"].labels)
    for name, index in source.label_map.items():
        # A label the model never trains on is one it can never predict, yet labels.json lists it.
        if index not in trained:
            left, read = rows_left[index], rows_read[name]
            count = f"{read:,} in all" if left == read else f"{left:,} of its {read:,} left to split"
            # The number of labels shows a wrong label column at once (an id: one label a row).
            raise SpamtuneError(
                f"the train split would hold no {name!r} row ({count}; {len(source.label_map):,} labels); "
                f"a classifier learns only the labels it trains on: give more {name!r} rows"
            )

    train_texts = set(splits["train"].texts)
    leakage = {name: sum(text in train_texts for text in splits[name].texts) for name in ("validation", "test")}
    token_lengths = {name: _token_lengths(split.texts) for name, split in splits.items()}
    return PreparedSplits(
        source, options, splits, duplicates_dropped, rows_per_label, leakage, token_lengths, empty_texts_dropped
    )


def _undersample(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, int]:
    """Cut every label down to the rarest one's count, as the book's ``create_balanced_dataset``.

    For two labels this is the book's code exactly: ``[majority.sample(n_minority,
    random_state=seed), minority rows]``; with more, each larger label is sampled the same way
    (in class-index order) and the rarest labels follow unchanged.
    """
    counts = frame["label"].value_counts()
    smallest = int(counts.min())
    if counts.max() == smallest:
        return frame, smallest
    classes = sorted(counts.index)
    parts = [frame[frame["label"] == c].sample(smallest, random_state=seed) for c in classes if counts[c] > smallest]
    parts += [frame[frame["label"] == c] for c in classes if counts[c] == smallest]
    return pd.concat(parts), smallest


def _cut(frame: pd.DataFrame, fractions: tuple[float, float, float], stratify: bool, balanced: str = "") -> dict[str, Split]:
    """Cut the shuffled rows by position as the book does (``train_end = int(n * train_frac)``,
    ``validation_end = train_end + int(n * validation_frac)``, the rest is test).

    With ``stratify`` each label is cut that way on its own, so every split keeps the label
    proportions; rows stay in their shuffled order either way.
    """
    labels = frame["label"].to_numpy()
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify else [np.arange(len(frame))]
    assignment = np.empty(len(frame), dtype=np.int8)
    for positions in groups:
        train_end = int(len(positions) * fractions[0])
        validation_end = train_end + int(len(positions) * fractions[1])
        assignment[positions[:train_end]] = 0
        assignment[positions[train_end:validation_end]] = 1
        assignment[positions[validation_end:]] = 2
    splits = {}
    for index, name in enumerate(paths.SPLITS):
        part = frame[assignment == index]
        if part.empty:
            raise SpamtuneError(
                f"the {name} split would be empty ({len(frame):,} rows to split{balanced}, {name} fraction {fractions[index]:g}); "
                "use more data or a larger --split fraction"
            )
        splits[name] = Split(part["text"].tolist(), [int(label) for label in part["label"]])
    return splits


def _token_lengths(texts: list[str]) -> TokenLengths:
    lengths = np.array([len(ids) for ids in encode_texts(texts)])
    return TokenLengths(
        min=int(lengths.min()),
        median=float(np.median(lengths)),
        p95=round(float(np.percentile(lengths, 95)), 1),
        max=int(lengths.max()),
    )


def output_files(root: Path) -> list[Path]:
    """What ``spamtune prepare`` writes into the data root, in the order it reports them."""
    return [*(paths.split_file(root, name) for name in paths.SPLITS), paths.labels_file(root), paths.prepare_record_file(root)]


def write_prepared(root: str | Path, prepared: PreparedSplits) -> list[Path]:
    """Write the splits, ``labels.json`` and ``prepare.json`` into ``root``.

    Every file is first written in full under a temporary name; only when all five are
    complete are they renamed over the final names, so a failure leaves the previous set.
    All of it under ``split_lock.replacing_splits``: a reader (finetune, evaluate) never reads
    some files of this set and some of the one before, and a second prepare into ``root``
    waits, then replaces the set whole. The temporaries a killed prepare left are removed first.
    """
    root = Path(root)
    targets = output_files(root)
    for target in targets:
        # The one rename that reliably fails; found among the five renames, it would come after
        # some of them had replaced their files, leaving splits from two preparations.
        if target.is_dir() and not target.is_symlink():
            raise SpamtuneError(f"cannot write {target}: it is a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(targets[0], NotADirectoryError(errno.ENOTDIR, "not a folder") if root.exists() else exc) from None
    with replacing_splits(root):
        for target in [*targets, root / RENAMING_MARK]:  # no live prepare writes them now: only a killed one's are left
            remove_temporaries_of(target)
        _write_and_rename(targets, prepared)
    return targets


def _write_and_rename(targets: list[Path], prepared: PreparedSplits) -> None:
    writers = [
        *(functools.partial(write_split_into, split=prepared.splits[name]) for name in paths.SPLITS),
        lambda tmp: tmp.write_bytes(json_bytes({"labels": prepared.source.label_map})),
        lambda tmp: tmp.write_bytes(json_bytes(prepared.record())),
    ]
    with contextlib.ExitStack() as renames:
        for target, write in zip(targets, writers):
            tmp = renames.enter_context(atomic_path(target))
            # Written into the temporary itself, and a failure named here: a full disk is then
            # "disk full: train.csv", not a hidden temporary's name, nor the file whose
            # temporary happened to be opened last.
            try:
                write(tmp)
            except OSError as exc:
                raise write_error(target, exc) from None
        with interrupts_deferred(), renaming(targets[0].parent):  # a Ctrl-C between two renames would leave a mixed set too
            renames.close()
