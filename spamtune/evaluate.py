"""Scoring a fine-tuned run on labelled messages, with a TF-IDF baseline beside it.

The model's figures come from the same evaluation function training uses (same batching,
same precision as the run), so the test accuracy here is the one in the run's
``summary.json``. The baseline answers the question a user should ask before paying for an
LLM: how far does TF-IDF + logistic regression, trained on the same split, get?
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from spamtune import paths, runs
from spamtune.calibration import DEFAULT_THRESHOLD, binary_report, calibrated_probabilities, nll, read_calibration
from spamtune.calibration import check_threshold_applies
from spamtune.checkpoint import ClassifierConfig, load_classifier, load_classifier_config
from spamtune.data import Split, read_label_map, read_split
from spamtune.device import Precision, resolve_device
from spamtune.distributed import World, predict_logits_sharded
from spamtune.errors import OptionError, SpamtuneError
from spamtune.examples import Examples, check_split_labels, data_fingerprint, pad_width
from spamtune.forward import EVAL_BATCH_SIZE, classification_loss, decided_classes
from spamtune.options import DEFAULT_LONG, LONG_MODES
from spamtune.metrics import classification_report
from spamtune.plots import plot_binary_evaluation
from spamtune.split_lock import reading_splits
from spamtune.tokenizer import encode_texts

EVAL_SPLITS = ("test", "validation", "train", "all")
BASELINE_NAME = "TF-IDF + logistic regression"


def run_data_root(run_dir: Path, data_dir: str | Path | None) -> Path:
    """Where a run's splits are: ``--data-dir`` if given, else the root it was trained on."""
    if data_dir:
        return Path(data_dir)
    if (run_dir / runs.HPARAMS_FILE).is_file():
        recorded = runs.read_hparams(run_dir).get("data_dir")
        if recorded:
            return Path(recorded)
    return paths.data_root()


def run_precision(run_dir: Path, device: torch.device) -> Precision:
    """The precision the run was trained and tested in, if this device has it; else fp32."""
    try:
        return Precision.resolve(runs.read_hparams(run_dir)["resolved"]["precision"], device)
    except (SpamtuneError, KeyError, TypeError):
        return Precision("fp32", device)


def read_splits(root: Path, split: str, cfg: ClassifierConfig) -> dict[str, Split]:
    """The named split (or all three) of a data root whose labels are the run's."""
    if paths.labels_file(root).is_file() and read_label_map(root) != cfg.labels:
        raise SpamtuneError(
            f"the labels of {root} ({read_label_map(root)}) are not the run's ({cfg.labels}); "
            "evaluate on the data the run was trained on"
        )
    splits = {}
    for name in paths.SPLITS if split == "all" else (split,):
        splits[name] = read_split(paths.split_file(root, name))
        check_split_labels(splits[name], cfg.num_classes, paths.split_file(root, name))
    return splits


# A class index as a labelled file may give it: ASCII digits only ("²" and "+-1" pass isdigit()
# after a strip, and int() refuses them).
_INTEGER = re.compile(r"[+-]?[0-9]+")


def read_labelled_file(path: str | Path | list[str], cfg: ClassifierConfig, fmt: str | None = None) -> Split:
    """A labelled file in any layout ``spamtune prepare`` reads (SMS collection, TSV, CSV with
    ``label,text``, JSONL; ``fmt`` as prepare's ``--format``: needed for stdin, ``-``, where no
    extension tells), or mail sources ``LABEL=PATH`` (a list of them). Labels are the run's
    names (``ham``/``spam``) or class indices. One label is enough: a file of ham alone gives the
    false-positive rate on it, the figures that need both classes are n/a."""
    from spamtune.labelled_texts import read_input

    source = read_input(Path("."), _input_list(path), fmt, min_labels=1)
    # A run whose labels are themselves numbers (1 and 2, -1 and 1) takes no indices: "0" or
    # "1" would then name a class by position where the file most likely means a label.
    takes_indices = not any(_INTEGER.fullmatch(name) for name in cfg.labels)
    labels = []
    for value in source.labels:
        if value in cfg.labels:
            labels.append(cfg.labels[value])
        elif takes_indices and _INTEGER.fullmatch(value) and 0 <= int(value) < cfg.num_classes:
            labels.append(int(value))
        else:
            known = ", ".join(cfg.label_names)
            where = _input_names(path)  # the CLI's --input is a list: named as given, not as ['...']
            indices = f" (or indices 0-{cfg.num_classes - 1})" if takes_indices else ""
            raise SpamtuneError(f"{where} has the label {value!r}; this run knows {known}{indices}")
    return Split(source.texts, labels)


def _input_list(inputs: str | Path | list[str]) -> list[str]:
    """``--input`` as a list of strings: one file, or the ``LABEL=PATH`` mail sources."""
    return [str(p) for p in inputs] if isinstance(inputs, list) else [str(inputs)]


def _input_names(inputs: str | Path | list[str]) -> str:
    """``--input`` as reports name it: ``-`` is stdin."""
    from spamtune.labelled_texts import input_name

    return ", ".join(input_name(Path(p)) for p in _input_list(inputs))


def _report(labels: list[int], preds: torch.Tensor, log_probs: torch.Tensor, label_names: list[str]) -> dict:
    """``classification_report`` plus the mean cross-entropy.

    Predictions are passed in (not re-derived from probabilities) so the model's are exactly
    the argmax of its logits, as in training's accuracy.
    """
    report = classification_report(labels, preds.tolist(), log_probs.exp().tolist(), label_names)
    # Log-probabilities are logits whose softmax is the probabilities: the training loss applies.
    report["loss"] = classification_loss(log_probs, torch.tensor(labels, dtype=torch.long)).item()
    return report


def _reports(parts: dict[str, Split], preds: torch.Tensor, log_probs: torch.Tensor, label_names: list[str]) -> dict:
    """The report over all parts together, and with several parts each one's under ``by_split``."""
    labels = [y for split in parts.values() for y in split.labels]
    report = _report(labels, preds, log_probs, label_names)
    if len(parts) > 1:
        report["by_split"], start = {}, 0
        for name, split in parts.items():
            part = slice(start, start + len(split))
            report["by_split"][name] = _report(split.labels, preds[part], log_probs[part], label_names)
            start += len(split)
    return report


def operating_point_report(labels: list[int], probs: torch.Tensor, positive: int, threshold: float, rule: str) -> dict:
    """The spam filter's figures, under fixed names: at the threshold (``threshold``,
    ``false_positive_rate``, ``spam_recall``, ``spam_precision``, ``spam_f1``,
    ``spam_confusion``: ``[[ham kept, ham lost], [spam missed, spam caught]]``) and
    threshold-free (``roc_auc``, ``pr_auc``, ``ece``), and how the threshold was chosen (``rule``)."""
    is_spam = [y == positive for y in labels]
    report = binary_report(is_spam, probs[:, positive].tolist(), threshold, probs)
    return {
        "threshold": threshold,
        "threshold_rule": rule,
        "false_positive_rate": report["false_positive_rate"],
        "spam_recall": report["spam_recall"],
        "spam_precision": report["precision"],
        "spam_f1": report["f1"],
        "spam_confusion": report["confusion_matrix"],
        "roc_auc": report["roc_auc"],
        "pr_auc": report["pr_auc"],
        "ece": report["ece"],
    }


def model_logits(
    model, cfg: ClassifierConfig, texts: list[str], *, precision: Precision, batch_size: int, long: str | None = None
):
    """The run's logits for texts, tokenised and batched exactly as in training's evaluations;
    texts longer than the run's window are read the ``long`` way (``spamtune.long_messages``).
    Under torchrun each rank computes a share and every rank gets all of them."""

    def logits_of(token_lists: list[list[int]]) -> torch.Tensor:
        examples = Examples(token_lists, pad_id=cfg.pad_token_id)
        return predict_logits_sharded(
            World.current(), model, examples, cfg.pooling, precision=precision, batch_size=batch_size, pad_to=pad_width(cfg.pooling, cfg.max_length)
        )

    if long in (None, "head"):
        return logits_of(encode_texts(texts, cfg.max_length))
    from spamtune.long_messages import deciding_windows

    window = min(cfg.max_length, cfg.model.context_length)
    return deciding_windows(encode_texts(texts), window, long, cfg.labels[cfg.positive_label], logits_of)[0]


def baseline_reports(train: Split, parts: dict[str, Split], label_names: list[str]) -> dict:
    """TF-IDF (word 1-2-grams, sublinear tf) + logistic regression trained on ``train``."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise OptionError("baseline", "{option} needs scikit-learn: pip install 'spamtune[baseline]'", exit_code=1) from None
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(vectorizer.fit_transform(train.texts), train.labels)
    texts = [t for split in parts.values() for t in split.texts]
    known = torch.as_tensor(classifier.predict_proba(vectorizer.transform(texts)), dtype=torch.float32)
    probs = torch.zeros(len(texts), len(label_names))
    probs[:, torch.as_tensor(classifier.classes_, dtype=torch.long)] = known  # classes absent from train stay 0
    return {"model": BASELINE_NAME, **_reports(parts, probs.argmax(dim=1), probs.clamp_min(1e-15).log(), label_names)}


def check_data_fingerprint(run_dir: Path, root: Path, force: bool) -> list[str]:
    """Refuse to score a run on splits other than those it was prepared with (a re-prepared data
    root may put its training messages in the test split and inflate every figure); with
    ``force``, score anyway and return the warning. Runs that recorded no fingerprint pass."""
    try:
        recorded = runs.read_hparams(run_dir)["resolved"]["data_fingerprint"]
    except (SpamtuneError, KeyError, TypeError):
        return []
    try:
        current = data_fingerprint(root)
    except OSError:  # a split file is missing: reading the splits says which, in one line
        return []
    if current == recorded:
        return []
    message = (
        f"the prepared splits in {root} are not the ones {run_dir.name} was trained with (their fingerprint "
        "differs): it may have trained on messages now in the split scored, so its figures may be inflated"
    )
    if not force:
        raise OptionError(
            "force",
            f"{message}; score the run on its own splits (prepare them again as it did), or pass {{option}} to score anyway",
            exit_code=1,
        )
    return [message]


def _decisions(logits: torch.Tensor, cfg: ClassifierConfig, threshold: float | None) -> torch.Tensor:
    """Predicted classes: for a two-class run with a threshold, the positive class (spam) when its
    probability is at least ``threshold`` (as ``predict`` decides); otherwise the most probable class."""
    if threshold is None:
        return logits.argmax(dim=1)
    return decided_classes(logits, cfg.labels[cfg.positive_label] if cfg.num_classes == 2 else None, threshold)


def check_evaluate_options(*, split: str, batch_size: int, threshold: float | None, long: str | None) -> None:
    """One clear error per bad argument of ``evaluate_run``, before the run is read."""
    if batch_size < 1:
        raise OptionError("batch_size", f"must be at least 1 (got {batch_size})")
    if split not in EVAL_SPLITS:
        raise OptionError("split", f"unknown {{option}} '{split}'; choose one of: {', '.join(EVAL_SPLITS)}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise OptionError("threshold", f"must be between 0 and 1 (got {threshold})")
    if long is not None and long not in LONG_MODES:
        raise OptionError("long", f"unknown {{option}} mode '{long}'; choose one of: {', '.join(LONG_MODES)}")


def decision_rule(calibration, cfg, threshold: float | None) -> tuple[float, float | None, str]:
    """How the run decides: its temperature (1 when not calibrated), the threshold (the given
    one; for a two-class run without one, the calibrated threshold, else 0.5) and how it was chosen."""
    temperature = calibration.temperature if calibration else 1.0
    if threshold is not None or cfg.num_classes != 2:
        return temperature, threshold, "given"
    if calibration is None:
        return temperature, DEFAULT_THRESHOLD, "default 0.5 (run not calibrated)"
    return temperature, calibration.threshold, calibration.describe()


def evaluate_run(
    run_dir: str | Path | None = None,
    *,
    split: str = "test",
    input_file: str | Path | list[str] | None = None,
    input_format: str | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = EVAL_BATCH_SIZE,
    baseline: bool = False,
    threshold: float | None = None,
    precision: str | None = None,
    force: bool = False,
    write_plots: bool = False,
    plots_dir: str | Path | None = None,
    long: str | None = None,
) -> dict:
    """Every figure of ``spamtune evaluate`` as one JSON-ready dict.

    ``run_dir`` is a run folder or a run's name under the data root's ``runs/``, by default the
    newest finished run. With ``split="all"`` the figures cover the three splits together and
    ``by_split`` holds each one's. ``threshold`` decides spam as ``predict`` does (``None``: the
    run's own; a run of more classes decides by the most probable one and refuses a threshold,
    ``OptionError``); ``precision`` defaults to the run's own, so the test accuracy is the
    one in its ``summary.json``. Splits prepared differently from the run's are refused unless
    ``force`` (then ``warnings`` says so).

    Probabilities are the run's calibrated ones (``calibration.json``: temperature). A two-class
    run is decided at ``threshold``, by default the run's calibrated one (0.5 without one); the
    figures at that threshold (``false_positive_rate``, ``spam_recall``, ...) and the
    threshold-free ones (``roc_auc``, ``pr_auc``, ``ece``) are top-level fields. ``write_plots``
    draws ``roc.svg``, ``pr.svg`` and ``calibration.svg`` (two-class runs) into ``plots_dir``, by
    default the run folder.
    """
    check_evaluate_options(split=split, batch_size=batch_size, threshold=threshold, long=long)
    run_dir = paths.resolve_run(run_dir, paths.data_root(data_dir))
    if threshold is not None:  # before the weights load: the config alone says how the run decides
        check_threshold_applies(load_classifier_config(run_dir).label_names)
    dev = resolve_device(device)
    compute = run_precision(run_dir, dev) if precision is None else Precision.resolve(precision, dev)
    model, cfg = load_classifier(run_dir, dev)
    root = run_data_root(run_dir, data_dir)
    warnings: list[str] = []
    baseline_train = None
    wants_train = baseline and World.current().is_main  # only rank 0 reports the baseline
    if input_file is not None:
        parts = {"input": read_labelled_file(input_file, cfg, input_format)}
    if input_file is None or wants_train:
        with reading_splits(root):  # what is checked and scored are the files of one preparation
            if input_file is None:
                warnings = check_data_fingerprint(run_dir, root, force)
                parts = read_splits(root, split, cfg)
            if wants_train:
                baseline_train = read_splits(root, "train", cfg)["train"]

    from spamtune.labelled_texts import mail_inputs

    if long is None and input_file is not None and mail_inputs(_input_list(input_file)):
        long = DEFAULT_LONG
    texts = [t for part in parts.values() for t in part.texts]
    logits = model_logits(model, cfg, texts, precision=compute, batch_size=batch_size, long=long)
    temperature, threshold, rule = decision_rule(read_calibration(run_dir), cfg, threshold)
    result = {"run": str(run_dir), "split": None if input_file else split}
    if input_file is not None:
        result["input"] = _input_names(input_file)
    # "loss" stays the model's own cross-entropy, the figure training reports; the calibrated
    # one is beside it.
    decisions = _decisions(logits.double() / temperature, cfg, threshold)  # as calibrated_probabilities below
    result.update(_reports(parts, decisions, F.log_softmax(logits, dim=1), cfg.label_names))
    # Not "precision": that is the per-class metric beside it.
    result["compute_dtype"] = compute.name
    result["threshold"] = threshold
    result["warnings"] = warnings
    labels = [y for part in parts.values() for y in part.labels]
    result["temperature"] = temperature
    result["calibrated_loss"] = nll(logits, torch.tensor(labels), temperature)
    if cfg.num_classes == 2:
        probs = calibrated_probabilities(logits, temperature)
        positive = cfg.labels[cfg.positive_label]
        result.update(operating_point_report(labels, probs, positive, threshold, rule))
        if write_plots:
            uncalibrated = calibrated_probabilities(logits) if temperature != 1.0 else None
            is_spam = [y == positive for y in labels]
            drawn = plot_binary_evaluation(plots_dir or run_dir, is_spam, probs, positive, threshold, uncalibrated)
            result["plots"] = [str(p) for p in drawn]
    if baseline_train is not None:
        result["baseline"] = baseline_reports(baseline_train, parts, cfg.label_names)
    return result
