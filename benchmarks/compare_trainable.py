"""Test accuracy of LoRA against the block presets, same data, base, seed and recipe.

The loop is the one ``spamtune finetune`` runs, from the library's own parts (batches, steps,
full-split evaluations, best-on-validation weights, prefix cache) with no run folder to write,
so presets and LoRA are compared on equal terms; ``spamtune sweep`` runs the same with their
run folders. Usage:

    python benchmarks/compare_trainable.py --data-dir DIR [--model tiny] [--epochs 4] [--lr 5e-4]
        [--variants all,last-block,lora,lora-last-2]

prints one JSON line per variant (test/validation accuracy, trainable parameters, time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from spamtune.device import Precision
from spamtune.examples import epoch_batches, load_training_data
from spamtune.forward import evaluate_examples
from spamtune.lora import convert_to_lora_classifier, lora_trainable
from spamtune.model import GPTConfig, GPTModel, Trainable, convert_to_classifier, count_parameters
from spamtune.prefix_cache import attach_prefix_caches
from spamtune.train import optimizer_step


def build(cfg: GPTConfig, variant: str, seed: int, rank: int, alpha: float) -> GPTModel:
    """``lora`` (every block) or ``lora-last-N``; anything else is a finetune preset."""
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    if variant.startswith("lora"):
        blocks = int(variant.removeprefix("lora-last-")) if variant.startswith("lora-last-") else None
        return convert_to_lora_classifier(model, 2, rank=rank, alpha=alpha, blocks=blocks, seed=seed)
    return convert_to_classifier(model, 2, variant, seed)


def trainable_of(cfg: GPTConfig, variant: str) -> Trainable:
    if variant.startswith("lora"):
        blocks = int(variant.removeprefix("lora-last-")) if variant.startswith("lora-last-") else None
        return lora_trainable(cfg.n_layers, blocks)
    return Trainable.parse(variant, cfg.n_layers)


def run(args, variant: str, data) -> dict:
    precision = Precision("fp32", "cpu")
    device = precision.device
    cfg = GPTConfig.from_name(args.model)
    model = build(cfg, variant, args.seed, args.rank, args.alpha)
    for split in (data.train, data.validation, data.test):
        split.cache = None
    tick = time.perf_counter()
    report = attach_prefix_caches(model, data, trainable_of(cfg, variant), "last-real", precision)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.1, fused=True)
    best, best_key = None, None
    for epoch in range(args.epochs):
        model.train()
        for idx in epoch_batches(data.train.lengths, 8, args.seed, epoch):
            optimizer_step(model, optimizer, [data.train.batch(idx, device)], "last-real", precision)
        val_loss, val_acc = evaluate_examples(model, data.validation, "last-real", precision=precision)
        key = (val_loss, -val_acc)
        if best_key is None or key < best_key:
            best_key = key
            best = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in best:
                p.copy_(best[n])
    test_loss, test_acc = evaluate_examples(model, data.test, "last-real", precision=precision)
    trainable, total = count_parameters(model)
    return {
        "variant": variant,
        "test_acc": round(test_acc, 4),
        "test_loss": round(test_loss, 4),
        "val_acc": round(-best_key[1], 4),
        "val_loss": round(best_key[0], 4),
        "trainable_params": trainable,
        "total_params": total,
        "cached_blocks": report.start_block,
        "seconds": round(time.perf_counter() - tick, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--variants", default="all,last-block,lora")
    args = parser.parse_args()
    data = load_training_data(args.data_dir, GPTConfig.from_name(args.model).context_length, None)
    for variant in args.variants.split(","):
        print(json.dumps({**run(args, variant, data), "lr": args.lr, "epochs": args.epochs, "seed": args.seed}), flush=True)


if __name__ == "__main__":
    main()
