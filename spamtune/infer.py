"""Classifying texts with a fine-tuned run: the ``SpamClassifier`` API.

``SpamClassifier.load(run_dir)`` reads a run folder once (config, tokenizer, weights straight
from the safetensors file); ``predict`` then turns texts into labels and probabilities through
the forward pass training and evaluation use (``forward.predict_logits``). ``spamtune predict``
is a thin layer over it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import torch

from spamtune import paths
from spamtune.checkpoint import ClassifierConfig, load_classifier
from spamtune.device import Precision, resolve_device
from spamtune.errors import SpamtuneError
from spamtune.examples import Examples, pad_width
from spamtune.forward import predict_logits
from spamtune.model import GPTModel
from spamtune.tokenizer import TOKENIZER_ID, encode_texts

DEFAULT_THRESHOLD = 0.5
DEFAULT_BATCH_SIZE = 32


def store_linear_weights_in(model: GPTModel, dtype: torch.dtype) -> None:
    """Keep the transformer blocks' Linear weights in the autocast dtype.

    Autocast casts every Linear's weight and bias to that dtype before multiplying, so storing
    them cast already gives the same results, halves their memory (gpt2-small: 340 MB of fp32
    weights become 170 MB) and saves the cast on every call. Embeddings, LayerNorms and the
    head stay fp32, as autocast keeps them.
    """
    with torch.no_grad():
        for module in model.trf_blocks.modules():
            if isinstance(module, torch.nn.Linear):
                for name, param in list(module.named_parameters(recurse=False)):
                    if param.dtype != dtype:
                        setattr(module, name, torch.nn.Parameter(param.to(dtype), requires_grad=False))


@dataclass(frozen=True)
class Prediction:
    """One classified text. ``probability`` is that of the positive class (``spam``), whatever ``label`` is."""

    text: str
    label: str
    probability: float


class SpamClassifier:
    """A fine-tuned run, ready to classify texts.

    >>> clf = SpamClassifier.load()                      # the latest run under the data root
    >>> clf.predict("WINNER!! Claim your free prize now")
    Prediction(text='WINNER!! Claim your free prize now', label='spam', probability=0.98...)

    Texts are tokenized as in training and cut to the run's ``max_length`` tokens, keeping the
    *start* of each text (spam announces itself early). Empty texts are classified too.
    For a two-class run the label is the positive class (``spam``) when its probability is
    ``>= threshold``; with more classes it is the most probable class and ``threshold`` is unused.
    """

    def __init__(
        self,
        model: GPTModel,
        config: ClassifierConfig,
        device: str | torch.device = "cpu",
        threshold: float = DEFAULT_THRESHOLD,
        batch_size: int = DEFAULT_BATCH_SIZE,
        run_dir: str | Path | None = None,
        precision: str | Precision = "auto",
    ):
        if config.tokenizer != TOKENIZER_ID:
            raise SpamtuneError(f"this run uses the tokenizer '{config.tokenizer}'; spamtune has only '{TOKENIZER_ID}'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.config = config
        self.device = torch.device(device)
        if not isinstance(precision, Precision):
            precision = Precision.resolve(precision, self.device)
        self._precision = precision
        self.precision = self._precision.name
        if self._precision.dtype is not None:
            store_linear_weights_in(self.model, self._precision.dtype)
        self.batch_size = batch_size
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.threshold = threshold
        self.max_length = min(config.max_length, config.model.context_length)
        self._positive_index = config.labels[config.positive_label]

    @classmethod
    def load(
        cls,
        run_dir: str | Path | None = None,
        device: str | torch.device = "auto",
        data_dir: str | Path | None = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = "auto",
    ) -> SpamClassifier:
        """Load a run: a folder, or a run's name under the data root's ``runs/`` (the data root is
        ``data_dir``, else ``$SPAMTUNE_HOME``, else the user data folder); without ``run_dir``, the
        newest finished run there. ``device``: auto, cpu, cuda, mps. ``precision``: auto (bf16
        where the hardware runs it natively, else fp32), fp32, bf16, fp16."""
        run_dir = paths.resolve_run(run_dir, paths.data_root(data_dir))
        dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
        resolved = Precision.resolve(precision, dev)
        model, config = load_classifier(run_dir, dev, linear_dtype=resolved.dtype)
        return cls(model, config, dev, threshold=threshold, batch_size=batch_size, run_dir=run_dir, precision=resolved)

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {value}")
        self._threshold = float(value)

    @property
    def labels(self) -> list[str]:
        """Label names in class-index order (the columns of ``predict_proba``)."""
        return self.config.label_names

    @property
    def positive_label(self) -> str:
        """The class whose probability ``Prediction.probability`` holds (``spam`` for SMS runs)."""
        return self.config.positive_label

    def predict_proba(self, texts: str | Iterable[str]) -> torch.Tensor:
        """Class probabilities ``[n, num_classes]`` (rows sum to 1), columns ordered as ``labels``."""
        return self._probabilities(_text_list(texts)[0])

    @overload
    def predict(self, texts: str) -> Prediction: ...

    @overload
    def predict(self, texts: Iterable[str]) -> list[Prediction]: ...

    def predict(self, texts: str | Iterable[str]) -> Prediction | list[Prediction]:
        """One ``Prediction`` for a string, a list of them (in order) for an iterable of strings."""
        items, single = _text_list(texts)
        predictions = self.predictions(items, self._probabilities(items))
        return predictions[0] if single else predictions

    def predictions(self, texts: list[str], probs: torch.Tensor) -> list[Prediction]:
        """A ``Prediction`` per text from its class probabilities ``[n, num_classes]``, labelled as
        ``predict`` labels (``threshold`` for two classes, else the most probable class)."""
        positive = probs[:, self._positive_index].tolist()
        if self.config.num_classes == 2:
            negative_label = self.labels[1 - self._positive_index]
            labels = [self.positive_label if p >= self.threshold else negative_label for p in positive]
        else:
            labels = [self.labels[i] for i in probs.argmax(dim=1).tolist()]
        return [Prediction(t, label, p) for t, label, p in zip(texts, labels, positive)]

    def token_logits(self, token_lists: Sequence[Sequence[int]]) -> torch.Tensor:
        """Class logits ``[n, num_classes]`` of token id lists (each at most ``max_length`` long):
        the forward pass every prediction goes through, in the classifier's batches and precision."""
        examples = Examples([list(ids) for ids in token_lists], pad_id=self.config.pad_token_id)
        return predict_logits(
            self.model,
            examples,
            self.config.pooling,
            precision=self._precision,
            batch_size=self.batch_size,
            pad_to=pad_width(self.config.pooling, self.max_length),
        )

    def _probabilities(self, texts: list[str]) -> torch.Tensor:
        return torch.softmax(self.token_logits(encode_texts(texts, self.max_length)), dim=1)

    def __repr__(self) -> str:
        where = f"{self.run_dir}, " if self.run_dir else ""
        return (
            f"SpamClassifier({where}labels={self.labels}, device={self.device}, "
            f"precision={self.precision}, threshold={self.threshold})"
        )


def _text_list(texts: str | Iterable[str]) -> tuple[list[str], bool]:
    """``(texts as a list, whether a single string was given)``; anything but strings is a TypeError."""
    if isinstance(texts, str):
        return [texts], True
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; item {i} is {type(text).__name__}")
    return items, False
