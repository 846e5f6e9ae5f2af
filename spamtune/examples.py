"""Tokenised examples and the batches made from them, for training, evaluation and prediction.

``Examples`` is a list of token id lists (with class labels when they are known) that turns
index lists into padded ``Batch``es, from its frozen-prefix cache when one is attached.
``load_training_data`` reads a data root's prepared splits into three of them;
``epoch_batches`` is the shuffled, length-bucketed order of one training epoch.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from spamtune import paths
from spamtune.data import Split, bucketed_batches, pad_batch, read_label_map, read_split
from spamtune.errors import SpamtuneError, SpamtuneWarning
from spamtune.mail import READING_VERSION
from spamtune.split_lock import reading_splits
from spamtune.tokenizer import EOT_ID, encode_texts

if TYPE_CHECKING:
    from spamtune.model import GPTModel
    from spamtune.prefix_cache import FrozenPrefixCache


def pad_width(pooling: str, max_length: int) -> int | None:
    """How wide every batch is padded: ``last`` pooling reads the final padded position, so it
    must see the width it was trained with (the book pads every message to the training
    maximum); the other poolings ignore padding and pad each batch to its own longest."""
    return max_length if pooling == "last" else None


@dataclass
class Batch:
    """Right-padded token ids (or, from a prefix cache, the frozen blocks' outputs for them),
    each row's real length, and the class labels (None when unknown)."""

    input_ids: torch.Tensor | None
    lengths: torch.Tensor
    labels: torch.Tensor | None
    prefix: torch.Tensor | None = None  # [b, t, emb_dim], the output of block start_block - 1
    start_block: int = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def logits(self, model: GPTModel, pooling: str, last_query_only: bool = True) -> torch.Tensor:
        return model.classify(
            self.input_ids, self.lengths, pooling,
            prefix=self.prefix, start_block=self.start_block, last_query_only=last_query_only,
        )  # fmt: skip


@dataclass
class Examples:
    """Token id lists, their class indices (None for texts to classify), and the padding token."""

    tokens: list[list[int]]
    labels: list[int] | None = None
    cache: FrozenPrefixCache | None = None  # set by prefix_cache.attach_prefix_caches
    pad_id: int = EOT_ID

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    def batch(self, indices: list[int], device: torch.device | str = "cpu", pad_to: int | None = None) -> Batch:
        labels = None
        if self.labels is not None:
            labels = torch.tensor([self.labels[i] for i in indices], dtype=torch.long, device=device)
        if self.cache is not None:
            prefix, lengths = self.cache.batch(indices, device)
            return Batch(None, lengths, labels, prefix, self.cache.start_block)
        ids, lengths = pad_batch([self.tokens[i] for i in indices], self.pad_id, device)
        if pad_to is not None and ids.shape[1] < pad_to:
            ids = F.pad(ids, (0, pad_to - ids.shape[1]), value=self.pad_id)
        return Batch(ids, lengths, labels)


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled, length-bucketed batches of one epoch: a function of (seed, epoch) alone,
    so a resumed run replays exactly the order an uninterrupted one would have used."""
    return bucketed_batches(lengths, batch_size, random.Random(f"spamtune-epoch:{seed}:{epoch}"))


@dataclass
class TrainingData:
    labels: dict[str, int]
    max_length: int
    train: Examples
    validation: Examples
    test: Examples
    fingerprint: str  # sha256 of labels.json and the split files: resume refuses changed data

    def split(self, name: str) -> Examples:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def check_split_labels(split: Split, num_classes: int, source: Path) -> None:
    bad = next((y for y in split.labels if not 0 <= y < num_classes), None)
    if bad is not None:
        raise SpamtuneError(f"{source} has the label {bad}, but there are only {num_classes} classes (0-{num_classes - 1})")


def load_training_data(root: Path, context_length: int, max_length: int | None) -> TrainingData:
    """Read and tokenise the prepared splits of a data root.

    The default maximum length is the longest training message (as the book pads to it),
    capped by the model's context; longer messages in any split keep their first tokens.
    """
    with reading_splits(root):  # the files of one preparation, and the fingerprint of those
        labels, split_paths = prepared_data(root)
        splits = {name: read_split(path) for name, path in split_paths.items()}
        fingerprint = data_fingerprint(root)
        warn_of_old_mail_reading(root)
    for name, split in splits.items():
        if not len(split):
            raise SpamtuneError(f"{split_paths[name]} holds no examples")
        check_split_labels(split, len(labels), split_paths[name])
    if max_length is None:
        max_length = min(context_length, max(map(len, encode_texts(splits["train"].texts))))
    examples = {name: Examples(encode_texts(s.texts, max_length), s.labels) for name, s in splits.items()}
    return TrainingData(labels, max_length, examples["train"], examples["validation"], examples["test"], fingerprint)


def prepared_data(root: Path) -> tuple[dict[str, int], dict[str, Path]]:
    """The label map and the split files ``spamtune prepare`` wrote under ``root``; one line
    saying to run it when any of them is missing."""
    labels = read_label_map(root)
    split_paths = {name: paths.split_file(root, name) for name in paths.SPLITS}
    for path in split_paths.values():
        if not path.is_file():
            raise SpamtuneError(f"split file not found: {path}; run `spamtune prepare` first")
    return labels, split_paths


def warn_of_old_mail_reading(root: Path) -> None:
    """A ``SpamtuneWarning`` when ``root``'s splits were read from mail by another version of
    ``spamtune.mail``'s reading: the run would learn from text that ``predict --mail``,
    ``filter`` and ``serve`` no longer show it. A record written before versions were kept is
    version 1; a missing or unreadable record (splits written by hand) says nothing."""
    try:
        source = json.loads(paths.prepare_record_file(root).read_bytes())["input"]
        mail, version = "mail_sources" in source, source.get("mail_reading", 1)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if mail and version != READING_VERSION:
        warnings.warn(
            f"the splits in {root} were read from mail by another version of spamtune (mail reading {version}, "
            f"now {READING_VERSION}), which reads some messages into other text than predict, filter and serve now do; "
            "run `spamtune prepare` again with the same sources so that the model learns from what it will be shown",
            SpamtuneWarning,
        )


def data_fingerprint(root: Path) -> str:
    """sha256 of a data root's labels.json and split files: a run records it (``hparams.json``,
    ``resolved.data_fingerprint``), so resume and evaluate can tell re-prepared data."""
    digest = hashlib.sha256()
    for path in (paths.labels_file(root), *(paths.split_file(root, name) for name in paths.SPLITS)):
        digest.update(path.read_bytes())
    return digest.hexdigest()
