"""The calibration study behind the README's class-mix and operating-point figures.

On the real SMS Spam Collection with the from-scratch ``tiny`` model (``--weights random
--trainable all --epochs 4 --lr 5e-4``), it trains

* ``book``: the book's recipe (undersample ham to spam's count, shuffle, cut) on the messages
  outside the natural test split, cut 87.5/12.5 so train and validation have the book's sizes
  (1,043 / 149 against the book's 1,045 / 149);
* ``natural-balanced``: every message, stratified 70/10/20 (``prepare --balance none``), with
  inverse-frequency class weights (``finetune --class-weights balanced``);
* ``natural-none``: the same data, unweighted loss;

and scores all of them on the same natural-mix test split (disjoint from every training set):
threshold-free figures, the figures at 0.5 and at the threshold calibrated for
``--max-ham-loss`` on each run's own validation split, ECE before/after temperature scaling,
and the explanation deletion test. Prints one JSON document on stdout.

    python benchmarks/calibration_study.py --home /tmp/calib-home --sms data/sms_spam_collection/SMSSpamCollection \
        --runs book,natural-balanced,natural-none
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from spamtune import calibration as cal
from spamtune import explain, runs, train
from spamtune.checkpoint import load_classifier
from spamtune.data import Split
from spamtune.evaluate import model_logits, run_precision
from spamtune.examples import Examples, pad_width
from spamtune.forward import predict_logits
from spamtune.options import FinetuneOptions
from spamtune.labelled_texts import LabelledTexts, read_labelled_texts
from spamtune.prepare import PrepareOptions, prepare_splits, write_prepared
from spamtune.tokenizer import encode_texts


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_roots(home: Path, sms: Path) -> dict[str, Path]:
    """Two data roots sharing one natural-mix test split."""
    source = read_labelled_texts(sms)
    natural = prepare_splits(source, PrepareOptions(balance="none", stratify=True))
    roots = {"natural": home / "natural", "book": home / "book"}
    write_prepared(roots["natural"], natural)
    outside = [*zip(natural.splits["train"].texts, natural.splits["train"].labels)]
    outside += [*zip(natural.splits["validation"].texts, natural.splits["validation"].labels)]
    names = {index: name for name, index in source.label_map.items()}
    rest = LabelledTexts(source.path, source.sha256, source.format, [t for t, _ in outside], [names[y] for _, y in outside], source.label_map)
    book = prepare_splits(rest, PrepareOptions(balance="undersample", split=(0.875, 0.0625, 0.0625)))
    # The book's cut gives validation 1/8 of train+validation; its own test part is folded
    # back into validation so that nothing is thrown away beyond the undersampling.
    book.splits["validation"] = Split(
        book.splits["validation"].texts + book.splits["test"].texts, book.splits["validation"].labels + book.splits["test"].labels
    )
    book.splits["test"] = natural.splits["test"]
    write_prepared(roots["book"], book)
    return roots


def train_run(root: Path, out: Path, class_weights: str) -> Path:
    options = FinetuneOptions(
        model="tiny", weights="random", trainable="all", epochs=4, lr=5e-4, data_dir=str(root), device="cpu",
        class_weights=class_weights,
    )
    resumable = runs.resume_file(out).is_file()
    if out.exists() and not resumable:
        shutil.rmtree(out)
    tick = time.perf_counter()
    summary = train.resume_finetune(out) if resumable else train.finetune(options, out=out)
    log(f"trained {out.name} in {time.perf_counter() - tick:.0f} s: test acc {summary['test_accuracy']:.4f}")
    return out


def study_run(run: Path, root: Path, max_ham_loss: float, deletion_ks: tuple[int, ...]) -> dict:
    from spamtune.data import read_split

    device = torch.device("cpu")
    model, cfg = load_classifier(run, device)
    precision = run_precision(run, device)
    positive = cfg.labels[cfg.positive_label]
    val = read_split(root / "validation.csv")
    test = read_split(root / "test.csv")
    val_logits = model_logits(model, cfg, val.texts, precision=precision, batch_size=64)
    test_logits = model_logits(model, cfg, test.texts, precision=precision, batch_size=64)
    test_spam = [y == positive for y in test.labels]
    n_val_ham = sum(1 for y in val.labels if y != positive)
    result = {"validation": {"n": len(val), "ham": n_val_ham, "spam": len(val) - n_val_ham}}
    try:
        calibration = cal.calibrate_logits(val_logits, val.labels, positive, rule="max-ham-loss", target=max_ham_loss)
        result["calibration"] = calibration.to_dict()
    except cal.SpamtuneError as exc:
        # Not measurable on this validation split: say so, and use the smallest rate that is.
        result["calibration_error"] = str(exc)
        smallest = 1 / n_val_ham
        calibration = cal.calibrate_logits(val_logits, val.labels, positive, rule="max-ham-loss", target=smallest)
        result["calibration"] = calibration.to_dict()
    t = calibration.temperature
    before = cal.calibrated_probabilities(test_logits, 1.0)
    after = cal.calibrated_probabilities(test_logits, t)
    result["test"] = {
        "n": len(test),
        "spam_share": sum(test_spam) / len(test),
        "at_0.5_uncalibrated": cal.binary_report(test_spam, before[:, positive].tolist(), 0.5, before),
        "at_calibrated_threshold": cal.binary_report(test_spam, after[:, positive].tolist(), calibration.threshold, after),
        "ece_before": cal.expected_calibration_error(before, test.labels),
        "ece_after": cal.expected_calibration_error(after, test.labels),
        "nll_before": cal.nll(test_logits, torch.tensor(test.labels), 1.0),
        "nll_after": cal.nll(test_logits, torch.tensor(test.labels), t),
    }

    def logits_of(token_lists):
        examples = Examples(token_lists, pad_id=cfg.pad_token_id)
        return predict_logits(model, examples, cfg.pooling, precision=precision, pad_to=pad_width(cfg.pooling, cfg.max_length))

    def p_spam(texts):
        logits = logits_of(encode_texts(texts, cfg.max_length))
        return cal.calibrated_probabilities(logits, t)[:, positive].tolist()

    flagged = [text for text, p in zip(test.texts, after[:, positive].tolist()) if p >= calibration.threshold]
    tick = time.perf_counter()
    with explain.fp32_head(model):
        explanations = explain.explain_texts(flagged, logits_of, positive_index=positive, max_length=cfg.max_length, temperature=t)
        seconds = time.perf_counter() - tick
        deletion = [explain.deletion_test(p_spam, explanations, k=k, draws=5, seed=0).to_dict() for k in deletion_ks]
    result["explain"] = {
        "messages": len(flagged),
        "seconds": round(seconds, 2),
        "deletion": deletion,
        "examples": [{"text": e.text, "p_spam": round(e.p_spam, 4), "top": e.top(3)} for e in explanations[:3]],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/calib-home"))
    parser.add_argument("--sms", type=Path, required=True)
    parser.add_argument("--max-ham-loss", type=float, default=0.01)
    parser.add_argument("--runs", default="book,natural-balanced")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    roots = {"natural": args.home / "natural", "book": args.home / "book"}
    if not all((root / "prepare.json").is_file() for root in roots.values()):
        roots = make_roots(args.home, args.sms)
    plan = {
        "book": (roots["book"], "none"),
        "natural-balanced": (roots["natural"], "balanced"),
        "natural-none": (roots["natural"], "none"),
    }
    report = {}
    for name in args.runs.split(","):
        root, weights = plan[name]
        run = args.home / "runs" / name
        if not (run / "summary.json").is_file():
            train_run(root, run, weights)
        report[name] = study_run(run, root, args.max_ham_loss, (1, 2, 3))
        log(json.dumps({name: report[name]["test"]["at_calibrated_threshold"]}))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
