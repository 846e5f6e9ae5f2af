"""The peers spamtune is measured against: plain Hugging Face fine-tuning scripts.

``GPT2ForSequenceClassification`` with the book's recipe (the last block + final LayerNorm +
2-class head trainable, AdamW lr 5e-5 and weight decay 0.1, batch 8), in two setups: every
message padded to the longest training example, as the book does; and the strongest a careful
user would write, length-grouped batches each padded to its own longest
(``time_grouped_epoch``). It pools at the last non-padding token, like spamtune's
``last-real``. Token ids come from the same GPT-2 BPE, so both sides see the same inputs.
"""

from __future__ import annotations

import contextlib
import time

import torch
import transformers

from spamtune.model import GPTConfig

PAD_ID = 50256


def build_peer(cfg: GPTConfig, seed: int = 123):
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, num_labels=2, pad_token_id=PAD_ID,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.GPT2ForSequenceClassification(hf_cfg)
    for p in model.parameters():
        p.requires_grad = False
    for module in (model.transformer.h[-1], model.transformer.ln_f, model.score):
        module.requires_grad_(True)
    return model


def _autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _padded(seqs: list[list[int]], width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _optimizer(model) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.1)


def _train_step(model, opt, seqs: list[list[int]], labels: list[int], width: int, precision: str) -> None:
    device = model.device
    ids, mask = _padded(seqs, width, device)
    with _autocast(precision, device):
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor(labels, device=device))
    opt.zero_grad()
    out.loss.backward()
    opt.step()


def time_training_steps(
    model, token_lists: list[list[int]], labels: list[int], steps: int, precision: str = "fp32", batch_size: int = 8
) -> float:
    """Seconds per optimizer step, every batch padded to the longest training example."""
    width = max(map(len, token_lists))
    opt = _optimizer(model)
    model.train()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(token_lists), generator=gen).tolist()

    def step(k: int) -> None:
        idx = [order[(k * batch_size + j) % len(order)] for j in range(batch_size)]
        _train_step(model, opt, [token_lists[i] for i in idx], [labels[i] for i in idx], width, precision)

    step(0)  # warm-up, not timed
    _sync(model.device)
    start = time.perf_counter()
    for k in range(1, steps + 1):
        step(k)
    _sync(model.device)
    return (time.perf_counter() - start) / steps


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int = 0, megabatch: int = 50) -> list[list[int]]:
    """The idea of Hugging Face's ``group_by_length``: a random order cut into megabatches of
    ``megabatch`` batches, each sorted longest first and cut into batches, so a batch holds
    messages of similar length while the order stays random."""
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    size = megabatch * batch_size
    batches = []
    for i in range(0, len(order), size):
        chunk = sorted(order[i : i + size], key=lambda k: -lengths[k])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    return batches


def time_grouped_epoch(
    model, token_lists: list[list[int]], labels: list[int], precision: str = "fp32", batch_size: int = 8
) -> dict:
    """The strongest plain-HF recipe: one full epoch of training steps over length-grouped
    batches, each padded to its own longest message (dynamic padding), no evaluation at all."""
    batches = length_grouped_batches(list(map(len, token_lists)), batch_size)
    opt = _optimizer(model)
    model.train()

    def step(idx: list[int]) -> None:
        seqs = [token_lists[i] for i in idx]
        _train_step(model, opt, seqs, [labels[i] for i in idx], max(map(len, seqs)), precision)

    step(batches[0])  # warm-up, not timed
    _sync(model.device)
    start = time.perf_counter()
    for idx in batches:
        step(idx)
    _sync(model.device)
    return {"steps": len(batches), "epoch_s": time.perf_counter() - start}


@torch.inference_mode()
def time_prediction(model, token_lists: list[list[int]], precision: str = "fp32", batch_size: int = 64) -> float:
    """Messages per second, batches in input order padded to their own longest (a data collator)."""
    model.eval()
    device = model.device
    start = time.perf_counter()
    for i in range(0, len(token_lists), batch_size):
        chunk = token_lists[i : i + batch_size]
        ids, mask = _padded(chunk, max(map(len, chunk)), device)
        with _autocast(precision, device):
            model(input_ids=ids, attention_mask=mask).logits.softmax(-1).cpu()
    return len(token_lists) / (time.perf_counter() - start)
