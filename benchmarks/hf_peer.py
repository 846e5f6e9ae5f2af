"""The peer spamtune is measured against: a plain Hugging Face fine-tuning script.

``GPT2ForSequenceClassification`` with the book's recipe: every message padded to the longest
training example, the last block + final LayerNorm + 2-class head trainable, AdamW
(lr 5e-5, weight decay 0.1), batch 8. It pools at the last non-padding token, like
spamtune's ``last-real``. Token ids come from the same GPT-2 BPE, so both sides see the
same inputs.
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


def _autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _padded(seqs: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def time_training_steps(
    model, token_lists: list[list[int]], labels: list[int], steps: int, precision: str = "fp32", batch_size: int = 8
) -> float:
    """Seconds per optimizer step, every batch padded to the longest training example."""
    width = max(map(len, token_lists))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.1)
    model.train()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(token_lists), generator=gen).tolist()

    def step(k: int) -> None:
        idx = [order[(k * batch_size + j) % len(order)] for j in range(batch_size)]
        ids, mask = _padded([token_lists[i] for i in idx], width)
        with _autocast(precision):
            out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([labels[i] for i in idx]))
        opt.zero_grad()
        out.loss.backward()
        opt.step()

    step(0)  # warm-up, not timed
    start = time.perf_counter()
    for k in range(1, steps + 1):
        step(k)
    return (time.perf_counter() - start) / steps


@torch.inference_mode()
def time_prediction(model, token_lists: list[list[int]], precision: str = "fp32", batch_size: int = 64) -> float:
    """Messages per second, batches in input order padded to their own longest (a data collator)."""
    model.eval()
    start = time.perf_counter()
    for i in range(0, len(token_lists), batch_size):
        chunk = token_lists[i : i + batch_size]
        ids, mask = _padded(chunk, max(map(len, chunk)))
        with _autocast(precision):
            model(input_ids=ids, attention_mask=mask).logits.softmax(-1)
    return len(token_lists) / (time.perf_counter() - start)
