"""Max |logit difference| between spamtune and Hugging Face transformers' GPT-2, fp32.

Random weights (pretrained ones cannot be downloaded here) of a given named shape, written by
``transformers`` with ``save_pretrained`` and read back by spamtune's loader.
Usage: python benchmarks/parity.py [gpt2-small] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import transformers

from spamtune import GPTConfig, GPTModel, load_pretrained_weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="gpt2-small")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    cfg = GPTConfig.from_name(args.model)
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    hf_cfg._attn_implementation = "eager"
    ref = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        t0 = time.perf_counter()
        ours = load_pretrained_weights(GPTModel(cfg), f"{tmp}/model.safetensors").eval()
        load_s = time.perf_counter() - t0
    ids = torch.randint(0, cfg.vocab_size, (2, args.tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(ids) - ref(ids).logits).abs().max().item()
    print(json.dumps({"model": args.model, "tokens": args.tokens, "max_abs_diff": diff, "load_s": round(load_s, 2)}))


if __name__ == "__main__":
    main()
