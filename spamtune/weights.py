"""Load OpenAI's GPT-2 weights, in Hugging Face's ``model.safetensors`` layout, into ``GPTModel``.

The mapping is written out key by key so it can be read and checked. Hugging Face stores
GPT-2's four projection matrices as ``Conv1D`` weights, ``[in, out]``; ``nn.Linear`` wants
``[out, in]``, so those four are transposed. safetensors files are memory-mapped and hold
no code, so loading one cannot execute anything.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from spamtune.errors import SpamtuneError
from spamtune.interrupts import read_tensor
from spamtune.model import MODEL_SIZES, GPTConfig, GPTModel

# Hugging Face GPT-2 name (after stripping "transformer.") -> spamtune name, per block.
_BLOCK_KEYS = {
    "ln_1.weight": "norm1.weight",
    "ln_1.bias": "norm1.bias",
    "attn.c_attn.weight": "att.qkv.weight",
    "attn.c_attn.bias": "att.qkv.bias",
    "attn.c_proj.weight": "att.out_proj.weight",
    "attn.c_proj.bias": "att.out_proj.bias",
    "ln_2.weight": "norm2.weight",
    "ln_2.bias": "norm2.bias",
    "mlp.c_fc.weight": "ff.fc.weight",
    "mlp.c_fc.bias": "ff.fc.bias",
    "mlp.c_proj.weight": "ff.proj.weight",
    "mlp.c_proj.bias": "ff.proj.bias",
}
_TOP_KEYS = {
    "wte.weight": "tok_emb.weight",
    "wpe.weight": "pos_emb.weight",
    "ln_f.weight": "final_norm.weight",
    "ln_f.bias": "final_norm.bias",
}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers, not weights: the causal mask and its fill value, which older exports saved.
_SKIPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def hf_to_spamtune_keys(n_layers: int) -> dict[str, str]:
    """The full mapping for a model with ``n_layers`` blocks."""
    mapping = dict(_TOP_KEYS)
    for i in range(n_layers):
        for hf, ours in _BLOCK_KEYS.items():
            mapping[f"h.{i}.{hf}"] = f"trf_blocks.{i}.{ours}"
    return mapping


def _normalise_key(key: str) -> str:
    return key.removeprefix("transformer.")


def read_hf_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the weights in a Hugging Face GPT-2 safetensors file, keys normalised."""
    path = Path(path)
    if not path.is_file():
        raise SpamtuneError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {_normalise_key(k): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpamtuneError(f"{path} is not a readable safetensors file: {exc}") from None


def infer_config(shapes: dict[str, tuple[int, ...]]) -> GPTConfig:
    """The GPT-2 shape a weights file holds (the head count is not stored: taken from the named
    size with that width, else 64-dim heads as in every released GPT-2)."""
    if "wte.weight" not in shapes or "wpe.weight" not in shapes:
        raise SpamtuneError("file holds no GPT-2 embeddings (wte.weight / wpe.weight missing)")
    # The file is anyone's: embeddings of another rank, or a block not numbered, are a wrong
    # file to report, not shapes to unpack.
    for key in ("wte.weight", "wpe.weight"):
        if len(shapes[key]) != 2:
            raise SpamtuneError(f"file holds no GPT-2 embeddings ('{key}' has shape {list(shapes[key])}, not 2-D)")
    vocab, dim = shapes["wte.weight"]
    context = shapes["wpe.weight"][0]
    # A key like "h.x.ln_1.weight" is no block; check_hf_file reports it as unexpected.
    blocks = (re.match(r"h\.(\d+)\.", key) for key in shapes)
    layers = 1 + max((int(match.group(1)) for match in blocks if match), default=-1)
    if layers == 0:
        raise SpamtuneError("file holds no GPT-2 blocks (no h.0.* weights)")
    heads = next((c.n_heads for c in MODEL_SIZES.values() if c.emb_dim == dim), max(1, dim // 64))
    return GPTConfig(vocab_size=vocab, context_length=context, emb_dim=dim, n_layers=layers, n_heads=heads)


def check_hf_file(path: str | Path, cfg: GPTConfig) -> None:
    """Raise a one-line error unless the file holds exactly the weights ``cfg`` needs."""
    shapes = {k: v for k, v in read_hf_shapes(path).items() if not k.endswith(_SKIPPED_SUFFIXES)}
    shapes.pop("lm_head.weight", None)  # tied to wte; some exports save it anyway
    try:
        found = infer_config(shapes)
    except SpamtuneError as exc:  # shapes no GPT-2 has (a width of 0 included): say which file
        raise SpamtuneError(f"{path} is not a GPT-2 weights file: {exc}") from None
    if (found.emb_dim, found.n_layers, found.vocab_size, found.context_length) != (
        cfg.emb_dim,
        cfg.n_layers,
        cfg.vocab_size,
        cfg.context_length,
    ):
        found_name = f" ({found.name})" if found.name else ""
        wanted = cfg.name or cfg.describe()
        raise SpamtuneError(
            f"{path} holds a {found.emb_dim}-dim, {found.n_layers}-layer model{found_name} "
            f"(vocab {found.vocab_size}, context {found.context_length}) but {wanted} was requested "
            f"({cfg.emb_dim}-dim, {cfg.n_layers}-layer, vocab {cfg.vocab_size}, context {cfg.context_length})"
        )
    mapping = hf_to_spamtune_keys(cfg.n_layers)
    missing = sorted(set(mapping) - set(shapes))
    extra = sorted(set(shapes) - set(mapping))
    if missing:
        raise SpamtuneError(f"{path} lacks {len(missing)} GPT-2 weight(s), e.g. '{missing[0]}'")
    if extra:
        raise SpamtuneError(f"{path} has {len(extra)} unexpected key(s), e.g. '{extra[0]}'")
    model_shapes = _expected_hf_shapes(cfg)
    for key, shape in shapes.items():
        if shape != model_shapes[key]:
            raise SpamtuneError(f"{path}: '{key}' has shape {list(shape)}, expected {list(model_shapes[key])}")


def _expected_hf_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    d, v, c = cfg.emb_dim, cfg.vocab_size, cfg.context_length
    shapes = {"wte.weight": (v, d), "wpe.weight": (c, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    per_block = {
        "ln_1.weight": (d,), "ln_1.bias": (d,), "ln_2.weight": (d,), "ln_2.bias": (d,),
        "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
        "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
        "mlp.c_fc.weight": (d, 4 * d), "mlp.c_fc.bias": (4 * d,),
        "mlp.c_proj.weight": (4 * d, d), "mlp.c_proj.bias": (d,),
    }  # fmt: skip
    for i in range(cfg.n_layers):
        shapes.update({f"h.{i}.{k}": s for k, s in per_block.items()})
    return shapes


def spamtune_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of ``GPTModel(cfg)``'s weights under spamtune's names, without building it (the
    vocabulary head, tied to the token embedding, is left out). Derived from the Hugging Face
    table through the key mapping, so the two layouts cannot drift apart."""
    mapping = hf_to_spamtune_keys(cfg.n_layers)
    shapes = {
        mapping[key]: shape[::-1] if key.endswith(_CONV1D) else shape for key, shape in _expected_hf_shapes(cfg).items()
    }
    if not cfg.qkv_bias:
        shapes = {key: shape for key, shape in shapes.items() if not key.endswith("att.qkv.bias")}
    return shapes


@torch.no_grad()
def load_pretrained_weights(model: GPTModel, path: str | Path) -> GPTModel:
    """Copy GPT-2 weights from a Hugging Face ``model.safetensors`` into ``model`` (in place).

    Keys may carry a ``transformer.`` prefix or not; every key and shape is checked first,
    so a wrong or truncated file fails with one clear line before anything is changed. A
    model built on the meta device (``with torch.device("meta"): GPTModel(cfg)``) takes the
    file's tensors as its parameters: no random init to throw away, one copy in memory.
    """
    check_hf_file(path, model.cfg)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    mapping = hf_to_spamtune_keys(model.cfg.n_layers)
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            hf_key = _normalise_key(key)
            if hf_key not in mapping:
                continue  # skipped buffers and a tied lm_head, checked above
            tensor = read_tensor(f, key)
            if hf_key.endswith(_CONV1D):
                tensor = tensor.t()
            name = mapping[hf_key]
            if params[name].is_meta:
                module_name, _, attr = name.rpartition(".")
                new = nn.Parameter(tensor.to(params[name].dtype).contiguous(), params[name].requires_grad)
                setattr(modules[module_name], attr, new)
            else:
                params[name].copy_(tensor)
    if model.out_head.weight.is_meta:  # it was tied to the meta embedding: tie it to the loaded one
        model.out_head.weight = model.tok_emb.weight
    return model
