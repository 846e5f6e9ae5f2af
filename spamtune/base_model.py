"""The model a run starts from, before the classifier surgery: GPT-2 with its weights, or a
random init under the run's seed.

When something is keyed by the base's identity (a kept prefix cache, a compact run's reference,
``spamtune.bases``), its sha256 is taken here, before training moves a weight, and a random
init drawn before under the same seed is read back from the data root's base store instead of
being drawn and hashed again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spamtune.bases import BaseIntake, BaseRef, base_tensors, base_weights_sha256, load_base, store_base, stored_random_base
from spamtune.model import RANDOM_INIT_VERSION, GPTConfig, GPTModel
from spamtune.options import FinetuneOptions, pretrained_weights_file
from spamtune.weights import load_pretrained_weights
from spamtune.interrupts import on_meta_device


def build_base(cfg: GPTConfig, options: FinetuneOptions) -> GPTModel:
    """GPT-2 with its weights, or a random init under the seed: what the run starts from."""
    torch.manual_seed(options.seed)
    if options.weights == "pretrained":
        with on_meta_device():  # the file's tensors become the weights: no init to discard
            model = GPTModel(cfg)
        return load_pretrained_weights(model, pretrained_weights_file(cfg, options.model, Path(options.data_dir)))
    return GPTModel(cfg)


def prepare_base(cfg: GPTConfig, options: FinetuneOptions) -> tuple[GPTModel, str | None, BaseRef | None]:
    """The base, its sha256 when something is keyed by it (a kept prefix cache, a compact run),
    and for a compact run its reference, the base stored once under the data root.

    A random init drawn before under the same seed is read back from that store (its hash
    checked) rather than drawn and hashed again: on a second run that is most of its start-up.
    """
    origin = base_origin(cfg, options)
    if not (options.keep_cache or options.compact):
        return build_base(cfg, options), None, None
    known = stored_random_base(options.data_dir, origin)
    base = stored_base_model(cfg, options.data_dir, known) if known is not None else None
    if base is not None:
        ref = store_base(options.data_dir, base, origin, sha256=known.sha256) if options.compact else None
        return base, known.sha256, ref
    # Hashed (and, for a compact run, stored) before training moves a weight; a random init
    # while it is drawn. A file's weights are hashed first: most runs find them stored already.
    if options.weights == "random":
        base, known = draw_base(cfg, options.seed, origin, options.data_dir if options.compact else None)
    else:
        base = build_base(cfg, options)
        known = BaseRef(base_weights_sha256(base), origin)
        if options.compact:
            known = store_base(options.data_dir, base, origin, sha256=known.sha256)
    return base, known.sha256, known if options.compact else None


def draw_base(cfg: GPTConfig, seed: int, origin: dict, store_in: str | Path | None) -> tuple[GPTModel, BaseRef]:
    """GPT-2's random init under ``seed`` (what ``build_base`` draws), hashed, and stored under
    the data root ``store_in`` if given, while it is drawn."""
    torch.manual_seed(seed)
    with on_meta_device():
        base = GPTModel(cfg)
    with BaseIntake(base_tensors(base.materialize()), origin, store_in) as intake:
        base.reset_parameters(drawn=intake.final)
        return base, intake.finish()


def stored_base_model(cfg: GPTConfig, root: str | Path, ref: BaseRef) -> GPTModel | None:
    """GPT-2 of shape ``cfg`` holding a stored base's tensors, or None if they do not fit it."""
    with on_meta_device():
        model = GPTModel(cfg)
    tensors = load_base(root, ref)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if unexpected or set(missing) != {"out_head.weight"}:
        return None
    model.out_head.weight = model.tok_emb.weight  # the tie the assignment replaced
    return model


def base_origin(cfg: GPTConfig, options: FinetuneOptions) -> dict:
    """Where a run's base comes from, for a compact run's reference (``spamtune.bases``)."""
    if options.weights == "pretrained":
        return {"kind": "pretrained", "name": cfg.name}
    return {"kind": "random", "model": cfg.to_dict(), "seed": options.seed, "init": RANDOM_INIT_VERSION}
