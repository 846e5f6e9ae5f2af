"""Test accuracy of LoRA against the block presets, same data, base, seed and recipe.

The loop is the one ``spamtune finetune`` runs (the library's own batches, steps, full-split
evaluations, best-on-validation weights, prefix cache), so that presets and LoRA, which
``finetune`` does not take yet, are compared on equal terms. Usage:

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

from spamtune.lora import convert_to_lora_classifier
from spamtune.model import GPTConfig, GPTModel, convert_to_classifier, count_parameters
from spamtune.train import (
    FinetuneOptions,
    attach_prefix_caches,
    epoch_batches,
    evaluate_examples,
    load_training_data,
    optimizer_step,
)


def build(cfg: GPTConfig, variant: str, seed: int, rank: int, alpha: float) -> GPTModel:
    """``lora`` (every block) or ``lora-last-N``; anything else is a finetune preset."""
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    if variant.startswith("lora"):
        blocks = int(variant.removeprefix("lora-last-")) if variant.startswith("lora-last-") else None
        return convert_to_lora_classifier(model, 2, rank=rank, alpha=alpha, blocks=blocks, seed=seed)
    return convert_to_classifier(model, 2, variant, seed)


def run(args, variant: str, data) -> dict:
    device = torch.device("cpu")
    cfg = GPTConfig.from_name(args.model)
    model = build(cfg, variant, args.seed, args.rank, args.alpha)
    for split in (data.train, data.validation, data.test):
        split.cache = None
    options = FinetuneOptions(model=args.model, weights="random", trainable="all", data_dir=str(args.data_dir))
    tick = time.perf_counter()
    report = attach_prefix_caches(model, data, options, device, "fp32")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.1, fused=True)
    best, best_key = None, None
    for epoch in range(args.epochs):
        model.train()
        for idx in epoch_batches(data.train.lengths, 8, args.seed, epoch):
            optimizer_step(model, optimizer, [data.train.batch(idx, device)], "last-real")
        val_loss, val_acc = evaluate_examples(model, data.validation, "last-real", device=device)
        key = (val_loss, -val_acc)
        if best_key is None or key < best_key:
            best_key = key
            best = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in best:
                p.copy_(best[n])
    test_loss, test_acc = evaluate_examples(model, data.test, "last-real", device=device)
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
