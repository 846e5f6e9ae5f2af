"""Classifying texts with a fine-tuned run: the ``SpamClassifier`` API.

``SpamClassifier.load(run_dir)`` reads a run folder once (config, tokenizer, weights straight
from the safetensors file); ``predict`` then turns texts into labels and probabilities through
the forward pass training and evaluation use (``forward.predict_logits``). ``spamtune predict``
is a thin layer over it.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import torch

from spamtune import paths
from spamtune.calibration import DEFAULT_THRESHOLD, Calibration, check_threshold_applies, read_calibration
from spamtune.checkpoint import ClassifierConfig, load_classifier, load_classifier_config
from spamtune.device import DEVICES, Precision, resolve_device
from spamtune.errors import OptionError, SpamtuneError
from spamtune.examples import Examples, pad_width
from spamtune.explain import explain_windows, fp32_head
from spamtune.explanation import Explanation
from spamtune.forward import predict_logits
from spamtune.long_messages import check_mode, deciding_windows
from spamtune.model import GPTModel
from spamtune.options import TEXT_LONG
from spamtune.tokenizer import TOKENIZER_ID, encode_texts

DEFAULT_BATCH_SIZE = 32
# A GPU's forward pass over a few dozen short messages is mostly kernel launches: on an H200
# gpt2-small classified the SMS file at 7,500 messages/s in batches of 32, 21,000 in batches
# of 128 and 30,000 in batches of 512. Batches there are capped in tokens
# (``forward.GPU_BATCH_TOKENS``), so that long mail does not make them large.
GPU_BATCH_SIZE = 256


def default_batch_size(device: torch.device) -> int:
    """Messages per forward pass when none is given: more on a GPU than on a CPU."""
    return DEFAULT_BATCH_SIZE if device.type == "cpu" else GPU_BATCH_SIZE


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


class NonFiniteProbability(SpamtuneError):
    """The model answered NaN or infinity for a text: broken or overflowing weights, not an
    answer (it would read as a confident ``ham`` and pass a spam check). ``index`` is the text's
    place (from 0) in the texts classified together."""

    def __init__(self, index: int, value: float):
        self.index, self.value = index, value
        super().__init__(
            f"the model gave a non-finite probability ({value}) for text {index + 1:,}; "
            "its weights overflow at this precision or are broken, so no answer is given"
        )


def check_finite_probabilities(probabilities: list[float]) -> None:
    """Raise ``NonFiniteProbability`` for the first NaN or infinite probability."""
    for index, value in enumerate(probabilities):
        if not math.isfinite(value):
            raise NonFiniteProbability(index, value)


def checked_threshold(value: float) -> float:
    """``value`` as a float threshold. Not a number (a string such as ``"0.5"``, or a bool, which
    Python counts as an int) is an ``OptionError``, rather than a comparison's bare TypeError or
    ``True`` taken for 1.0; a number outside [0, 1] (NaN included) is a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError("threshold", f"must be a number between 0 and 1, not {type(value).__name__} {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {value}")
    return float(value)


def checked_batch_size(value: int) -> int:
    """``value`` as a batch size: not an integer (``1.5``, ``"8"``, or a bool, which Python counts
    as an int) is an ``OptionError`` at load, as for ``threshold``, rather than a TypeError deep
    in the first ``predict``; below 1 a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError("batch_size", f"must be a whole number of messages, not {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"batch_size must be at least 1, got {value}")
    return int(value)


def checked_device(device: str | torch.device | int | None) -> torch.device:
    """``device`` (a name, a ``torch.device`` or an index) as a device this machine has: one it
    does not is the ``OptionError`` of ``resolve_device``, not torch's RuntimeError or assertion."""
    if device is None or isinstance(device, str):
        return resolve_device(device)
    try:
        name = str(torch.device(device))
    except (TypeError, RuntimeError, ValueError):  # an index on a machine without an accelerator
        raise OptionError(
            "device", f"{{option}} {device!r} is not one this machine has; give one of: {', '.join(DEVICES)}, or a torch.device",
            exit_code=1,
        ) from None
    return resolve_device(name)


class SpamClassifier:
    """A fine-tuned run, ready to classify texts.

    >>> clf = SpamClassifier.load()                      # the latest run under the data root
    >>> clf.predict("WINNER!! Claim your free prize now")
    Prediction(text='WINNER!! Claim your free prize now', label='spam', probability=0.98...)

    Texts are tokenized as in training and cut to the run's ``max_length`` tokens, keeping the
    *start* of each text (spam announces itself early). Empty texts are classified too.
    For a two-class run the label is the positive class (``spam``) when its probability is
    ``>= threshold``; with more classes it is the most probable class, and ``load`` refuses a
    ``threshold`` (``OptionError``) rather than ignore it.

    A run's ``calibration.json`` (written after training and by ``spamtune calibrate``) gives the
    temperature that divides the logits and the default threshold; ``calibration=False`` uses
    the raw probabilities and 0.5, and an explicit ``threshold`` always wins.
    """

    def __init__(
        self,
        model: GPTModel,
        config: ClassifierConfig,
        device: str | torch.device = "cpu",
        threshold: float = DEFAULT_THRESHOLD,
        batch_size: int | None = None,
        run_dir: str | Path | None = None,
        precision: str | Precision = "auto",
        calibration: Calibration | None = None,
        few_shapes: bool = False,
    ):
        if config.tokenizer != TOKENIZER_ID:
            raise SpamtuneError(f"this run uses the tokenizer '{config.tokenizer}'; spamtune has only '{TOKENIZER_ID}'")
        self.model = model.eval()
        self.config = config
        self.device = torch.device(device)
        batch_size = default_batch_size(self.device) if batch_size is None else checked_batch_size(batch_size)
        if not isinstance(precision, Precision):
            precision = Precision.resolve(precision, self.device)
        self._precision = precision
        self.precision = self._precision.name
        if self._precision.dtype is not None:
            store_linear_weights_in(self.model, self._precision.dtype)
        self.batch_size = batch_size
        # Batch widths and row counts rounded up: the same answers, and a bounded set of batch
        # shapes for a long-running process (``spamtune serve``); see ``predict_logits``.
        self.few_shapes = few_shapes
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.calibration = calibration
        self.temperature = calibration.temperature if calibration else 1.0
        self.threshold = threshold
        self.max_length = min(config.max_length, config.model.context_length)
        self._positive_index = config.labels[config.positive_label]
        # One forward pass at a time: ``predict_explained`` swaps the model's head for an fp32
        # one while it explains, and a ``predict`` from another thread meanwhile got other
        # probabilities than alone; two explanations at once left the fp32 head in for good.
        self._model_in_use = threading.RLock()

    @classmethod
    def load(
        cls,
        run_dir: str | Path | None = None,
        device: str | torch.device = "auto",
        data_dir: str | Path | None = None,
        *,
        threshold: float | None = None,
        batch_size: int | None = None,
        precision: str = "auto",
        calibration: bool = True,
        few_shapes: bool = False,
    ) -> SpamClassifier:
        """Load a run: a folder, or a run's name under the data root's ``runs/`` (the data root is
        ``data_dir``, else ``$SPAMTUNE_HOME``, else the user data folder); without ``run_dir``, the
        newest finished run there. ``device``: auto, cpu, cuda, mps. ``precision``: auto (bf16
        where the hardware runs it natively, else fp32), fp32, bf16, fp16. ``threshold``: None for
        the run's calibrated threshold (0.5 without one); a run of more than two classes decides
        by the most probable one and refuses a threshold. ``calibration=False`` ignores the run's
        ``calibration.json``. ``batch_size``: most messages per forward pass (None: 32 on a CPU,
        256 on a GPU). ``few_shapes``: round batch widths and row counts up (the same
        answers; a bounded set of shapes for a long-running process)."""
        if threshold is not None:
            threshold = checked_threshold(threshold)  # before anything loads
        if batch_size is not None:
            batch_size = checked_batch_size(batch_size)
        run_dir = paths.resolve_run(run_dir, paths.data_root(data_dir))
        if threshold is not None:  # before the weights load: the config alone says how the run decides
            check_threshold_applies(load_classifier_config(run_dir).label_names)
        dev = checked_device(device)
        resolved = Precision.resolve(precision, dev)
        model, config = load_classifier(run_dir, dev, linear_dtype=resolved.dtype)
        stored = read_calibration(run_dir) if calibration else None
        if threshold is None:
            threshold = stored.threshold if stored else DEFAULT_THRESHOLD
        return cls(
            model, config, dev, threshold=threshold, batch_size=batch_size, run_dir=run_dir, precision=resolved,
            calibration=stored, few_shapes=few_shapes,
        )  # fmt: skip

    def describe_threshold(self) -> str:
        """Where the threshold comes from, for display: the calibration's rule when it is the
        calibrated one, else "given"."""
        if self.calibration is not None and self.threshold == self.calibration.threshold:
            if self.calibration.rule == "threshold":  # kept as given: only the temperature was fitted
                return f"temperature {self.temperature:.3g} fitted on validation"
            return f"calibrated on validation for {self.calibration.describe()}, temperature {self.temperature:.3g}"
        return "given" if self.threshold != DEFAULT_THRESHOLD else "default"

    def describe_decision(self) -> str:
        """How labels are decided, for display: the threshold and where it comes from, or, for a
        run of more than two classes, the most probable class (which no threshold moves)."""
        if self.config.num_classes == 2:
            return f"threshold {self.threshold:.4g} ({self.describe_threshold()})"
        calibrated = f"; temperature {self.temperature:.3g} fitted on validation" if self.calibration else ""
        return f"the most probable of {self.config.num_classes} classes ({', '.join(self.labels)}) is the label{calibrated}"

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = checked_threshold(value)

    @property
    def labels(self) -> list[str]:
        """Label names in class-index order (the columns of ``predict_proba``)."""
        return self.config.label_names

    @property
    def positive_label(self) -> str:
        """The class whose probability ``Prediction.probability`` holds (``spam`` for SMS runs)."""
        return self.config.positive_label

    def predict_proba(self, texts: str | Iterable[str]) -> torch.Tensor:
        """Class probabilities ``[n, num_classes]`` (rows sum to 1), columns ordered as ``labels``;
        float32, as the model computes (labels are decided on the float64 ones)."""
        return self._probabilities(text_list(texts)[0]).float()

    @overload
    def predict(self, texts: str) -> Prediction: ...

    @overload
    def predict(self, texts: Iterable[str]) -> list[Prediction]: ...

    def predict(self, texts: str | Iterable[str]) -> Prediction | list[Prediction]:
        """One ``Prediction`` for a string, a list of them (in order) for an iterable of strings."""
        items, single = text_list(texts)
        predictions = self.predictions(items, self._probabilities(items))
        return predictions[0] if single else predictions

    def predictions(self, texts: list[str], probs: torch.Tensor) -> list[Prediction]:
        """A ``Prediction`` per text from its class probabilities ``[n, num_classes]``, labelled as
        ``predict`` labels (``threshold`` for two classes, else the most probable class)."""
        positive = probs[:, self._positive_index].tolist()
        check_finite_probabilities(positive)
        if self.config.num_classes == 2:
            negative_label = self.labels[1 - self._positive_index]
            labels = [self.positive_label if p >= self.threshold else negative_label for p in positive]
        else:
            labels = [self.labels[i] for i in probs.argmax(dim=1).tolist()]
        return [Prediction(t, label, p) for t, label, p in zip(texts, labels, positive)]

    def explain(self, texts: str | Iterable[str], long: str | None = None) -> Explanation | list[Explanation]:
        """Why each text got its spam probability: every word's push towards spam (positive
        score) or ham (negative), in calibrated log-odds, with exact character offsets
        (``spamtune.explain``). ``Explanation.top(k)`` is the JSON form ``predict --explain``
        prints; one ``Explanation`` for a string, a list for an iterable.

        ``long`` reads a text longer than the run's window as ``predict_long`` does (None: its
        head, as ``predict``); the explanation is of the window that decided the verdict, which
        ``Explanation.window`` names, and its ``p_spam`` is the verdict's. For the verdicts too,
        ``predict_explained``: they come from the same pass."""
        items, single = text_list(texts)
        explanations = self.predict_explained(items, long)[1]
        return explanations[0] if single else explanations

    def predict_explained(self, texts: Iterable[str], long: str | None = None) -> tuple[list[Prediction], list[Explanation]]:
        """``(predictions, explanations)`` of ``texts``, in order: what ``predict_long(self, texts,
        long)`` and ``explain(texts, long)`` give (``long`` None: the head, as ``explain``), from
        one verdict pass. Asked for apart, every window of every text goes through the model once
        more: the two passes are the same call on the same windows, so the answers are the same
        bit for bit, and the second cost ``predict --explain`` 7 of its 46 forward calls and
        7-10% of its time on 50 SMS texts (the ``tiny`` model, 2 CPU cores)."""
        items, _ = text_list(texts)
        mode = check_mode(TEXT_LONG if long is None else long)
        token_lists = encode_texts(items)
        # The windows are chosen, and the verdicts computed, by predict_long's own pass, at the
        # run's precision: fp32_head below could rank two close windows otherwise.
        verdicts, windows = deciding_windows(token_lists, self.max_length, mode, self._positive_index, self.token_logits)
        predictions = self.predictions(items, torch.softmax(verdicts, dim=1))  # a NaN stops here, before the variants
        with self._model_in_use, fp32_head(self.model):  # token_logits' logits are calibrated already
            explanations = explain_windows(
                items, token_lists, windows, verdicts, self.token_logits, positive_index=self._positive_index
            )
        return predictions, explanations

    def token_logits(self, token_lists: Sequence[Sequence[int]]) -> torch.Tensor:
        """Calibrated class logits ``[n, num_classes]`` (divided by the run's temperature, in
        float64) of token id lists (each at most ``max_length`` long): the forward pass every
        prediction goes through, in the classifier's batches and precision. float64 as in
        ``spamtune calibrate``, so that a probability is compared with the threshold exactly as
        the threshold was chosen (float32 cannot tell apart probabilities within 6e-8 of 1)."""
        examples = Examples([list(ids) for ids in token_lists], pad_id=self.config.pad_token_id)
        with self._model_in_use:
            logits = predict_logits(
                self.model,
                examples,
                self.config.pooling,
                precision=self._precision,
                batch_size=self.batch_size,
                pad_to=pad_width(self.config.pooling, self.max_length),
                few_shapes=self.few_shapes,
            )
        return logits.double() / self.temperature

    def _probabilities(self, texts: list[str]) -> torch.Tensor:
        return torch.softmax(self.token_logits(encode_texts(texts, self.max_length)), dim=1)

    def __repr__(self) -> str:
        where = f"{self.run_dir}, " if self.run_dir else ""
        return (
            f"SpamClassifier({where}labels={self.labels}, device={self.device}, "
            f"precision={self.precision}, threshold={self.threshold}, temperature={self.temperature:.4g})"
        )


# Bytes are an iterable of ints: said as such, a caller holding an encoded text or a raw
# e-mail would read "item 0 is int" and not see why.
_BYTES = (bytes, bytearray, memoryview)
_BYTES_HINT = (
    "decode them first (data.decode('utf-8', errors='replace')); for a raw e-mail message, "
    "spamtune.mail.message_text(raw) gives the text spamtune filter classifies"
)


def text_list(texts: str | Iterable[str]) -> tuple[list[str], bool]:
    """``(texts as a list, whether a single string was given)``; anything but strings is a TypeError
    (what every entry point that takes texts accepts: ``predict``, ``explain``, ``predict_long``)."""
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, _BYTES):
        raise TypeError(f"texts must be strings, not {type(texts).__name__}: {_BYTES_HINT}")
    if not isinstance(texts, Iterable):  # else list() says "'NoneType' object is not iterable"
        raise TypeError(f"texts must be a string or an iterable of strings, not {type(texts).__name__}")
    items = list(texts)
    for i, text in enumerate(items):
        if isinstance(text, _BYTES):
            raise TypeError(f"texts must be strings; item {i} is {type(text).__name__}: {_BYTES_HINT}")
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; item {i} is {type(text).__name__}")
    return items, False
