"""GPT-2 from scratch, and the chapter-6 surgery that turns it into a classifier.

The architecture is the one OpenAI released (and Hugging Face's ``GPT2LMHeadModel``
reproduces): learned token and position embeddings, pre-LayerNorm transformer blocks
with causal multi-head attention and a tanh-GELU MLP, a final LayerNorm, and an output
head tied to the token embedding. Attention goes through
``torch.nn.functional.scaled_dot_product_attention`` so PyTorch picks a fast kernel for
the device (on CUDA, among those ``Precision.forward_context`` allows).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spamtune.errors import OptionError, SpamtuneError
from spamtune.folded_attention import FoldedAttention, attend_at
from spamtune.linear import linear, linear_gelu, packed_weight_of
from spamtune.row_norm import norm_rows
from spamtune.interrupts import on_meta_device
from spamtune.model_names import canonical_model_name, names_config_file

# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT-2 model. Field names follow the book (``emb_dim``, ``n_layers``...)."""

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = True
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        # Every field is checked for its type too: a config file with null, a list or "12" where
        # a number belongs must fail here with the field's name, not deep inside PyTorch.
        for name in ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads"):
            if not is_integer(getattr(self, name)) or getattr(self, name) < 1:
                raise SpamtuneError(f"model config: {name} must be a positive integer, got {show_value(getattr(self, name))}")
        if self.emb_dim % self.n_heads:
            raise SpamtuneError(
                f"model config: emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}"
            )
        if not is_real(self.drop_rate) or not 0.0 <= self.drop_rate < 1.0:
            raise SpamtuneError(f"model config: drop_rate must be a number in [0, 1), got {show_value(self.drop_rate)}")
        if not isinstance(self.qkv_bias, bool):
            raise SpamtuneError(f"model config: qkv_bias must be true or false, got {show_value(self.qkv_bias)}")
        if not is_real(self.ln_eps) or not 0.0 < self.ln_eps < 1.0:
            raise SpamtuneError(f"model config: ln_eps must be a number in (0, 1), got {show_value(self.ln_eps)}")

    @property
    def name(self) -> str | None:
        """The named size this shape matches, if any (``gpt2-small`` ...)."""
        for size, cfg in MODEL_SIZES.items():
            if replace(cfg, drop_rate=self.drop_rate) == self:
                return size
        return None

    def describe(self) -> str:
        return f"{self.emb_dim}-dim, {self.n_layers}-layer, {self.n_heads}-head"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        if not isinstance(data, dict):
            raise SpamtuneError(f"model config must be a JSON object, got {show_value(data)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpamtuneError(f"model config: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_name(cls, name: str) -> GPTConfig:
        """A named size (``gpt2-small``, ``124M``, ``tiny`` ...)."""
        return MODEL_SIZES[canonical_model_name(name)]

    @classmethod
    def from_json(cls, path: str | Path) -> GPTConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpamtuneError(f"model config file not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise SpamtuneError(f"cannot read model config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise SpamtuneError(f"model config {path} must hold a JSON object")
        return cls.from_dict(data)

    @classmethod
    def resolve(cls, spec: str | Path | GPTConfig) -> GPTConfig:
        """A named size or the path of a JSON config file."""
        if isinstance(spec, GPTConfig):
            return spec
        text = str(spec)
        if names_config_file(text):
            return cls.from_json(text)
        return cls.from_name(text)


def is_integer(value) -> bool:
    """A JSON integer: ``int`` but not ``bool`` (``true`` is not a layer count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite JSON number (NaN and Infinity, which Python's json accepts, are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def show_value(value) -> str:
    """A config value as its JSON spelling (``null``, ``[1, 2]``), short enough for one line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_GPT2 = GPTConfig()
MODEL_SIZES: dict[str, GPTConfig] = {
    "gpt2-small": _GPT2,
    "gpt2-medium": replace(_GPT2, emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-large": replace(_GPT2, emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-xl": replace(_GPT2, emb_dim=1600, n_layers=48, n_heads=25),
    # Not a released checkpoint: a shape small enough to train from scratch on a CPU
    # in minutes, for demos and tests.
    "tiny": replace(_GPT2, context_length=256, emb_dim=256, n_layers=4, n_heads=4),
}


# --------------------------------------------------------------------------- layers


def apply_linear(layer: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``layer(x)``, then GPT-2's GELU if asked. Where no gradient is needed, a LoRA layer's
    update is merged into its weight first (one product rather than three), and the product,
    with the GELU, is one ``spamtune.linear`` call: oneDNN on the CPU. A LoRA layer with B = 0
    then computes exactly what its base layer does."""
    if type(layer) is nn.Linear or not torch.is_grad_enabled():
        weight = packed_weight_of(layer)  # a frozen layer's, in the cache build (spamtune.linear)
        weight = applied_weight(layer) if weight is None else weight
        return linear_gelu(x, weight, layer.bias) if gelu else linear(x, weight, layer.bias)
    y = layer(x)
    return F.gelu(y, approximate="tanh") if gelu else y


def applied_weight(layer: nn.Linear) -> torch.Tensor:
    """The weight a Linear layer applies: its own, or with a LoRA update merged in
    (``spamtune.lora.LoRALinear``), so the folded final block stays exact under LoRA."""
    merged = getattr(layer, "merged_weight", None)
    return layer.weight if merged is None else merged()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.emb_dim // cfg.n_heads
        self.drop_rate = cfg.drop_rate
        # One fused projection for queries, keys and values, laid out as GPT-2's c_attn.
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.resid_dropout = nn.Dropout(cfg.drop_rate)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_after(x)[0]

    def forward_after(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Causal attention for ``x``, and ``x``'s own keys and values.

        ``past`` continues sequences whose earlier positions' keys and values are cached
        (``[batch, heads, p, head_dim]`` each, ``past_valid [batch, p]`` marking the real
        ones): the output at a position is what the whole sequence would give there.
        """
        b, t, d = x.shape
        q, k, v = (self._heads(z) for z in apply_linear(self.qkv, x).split(d, dim=2))
        dropout_p = self.drop_rate if self.training else 0.0
        if past is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            visible = torch.cat([past_valid[:, None, :].expand(b, t, -1), causal.expand(b, t, t)], dim=2)
            y = F.scaled_dot_product_attention(
                q, torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2),
                attn_mask=visible[:, None], dropout_p=dropout_p,
            )  # fmt: skip
        return self.resid_dropout(apply_linear(self.out_proj, y.transpose(1, 2).reshape(b, t, d))), (k, v)

    def forward_at(self, x_hat: torch.Tensor, index: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """Attention output ``[batch, emb_dim]`` at one position per sequence (``index``) of
        ``gamma * x_hat + beta``: the block's input normalised, and its LayerNorm's scale and
        shift, which are folded into the per-head vectors (``spamtune.folded_attention``).

        With a single query per sequence the key and value projections need not be computed at
        every position; they are folded into the query side instead (exact algebra):

        - score: ``q . (W_k x_t + b_k) = (W_k^T q) . x_t + q . b_k``. The ``q . b_k`` term is the
          same for every ``t`` and softmax ignores a constant shift, so it is dropped;
        - output: ``sum_t a_t (W_v x_t + b_v) = W_v (sum_t a_t x_t) + (sum_t a_t) b_v``.

        Per head that turns two ``emb_dim x emb_dim`` projections of every position into two
        dot products with ``emb_dim``-vectors: the final block's cost no longer grows with the
        sequence. Masking positions after ``index`` gives what the causal forward gives there.
        """
        b, t, d = x_hat.shape
        weight, bias = applied_weight(self.qkv), self.qkv.bias
        if torch.is_grad_enabled() and not (self.training and self.drop_rate) and not torch.is_autocast_enabled(x_hat.device.type):
            # Training in fp32 without dropout: the same forward, with the backward written out.
            y = FoldedAttention.apply(x_hat, gamma, beta, weight, bias, index, self.n_heads)
            return self.resid_dropout(apply_linear(self.out_proj, y))
        y, *_, weights, _ = attend_at(
            x_hat, gamma, beta, weight, bias, index, self.n_heads, lambda a: F.dropout(a, self.drop_rate, self.training)
        )
        if bias is not None:  # the weights sum to one, except where dropout zeroed some
            y = y + weights.sum(-1, keepdim=True) * bias[2 * d :].view(self.n_heads, self.head_dim)
        return self.resid_dropout(apply_linear(self.out_proj, y.reshape(b, d)))


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)
        self.dropout = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 uses the tanh approximation of GELU ("gelu_new" in transformers).
        return self.dropout(apply_linear(self.proj, apply_linear(self.fc, x, gelu=True)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=cfg.ln_eps)
        self.att = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=cfg.ln_eps)
        self.ff = FeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_after(x)[0]

    def forward_after(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None, past_valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block's output and its keys/values, optionally continuing after cached ones
        (``CausalSelfAttention.forward_after``)."""
        attended, kv = self.att.forward_after(self.norm1(x), past, past_valid)
        x = x + attended
        return x + self.ff(self.norm2(x)), kv

    def forward_at(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The block's output ``[batch, emb_dim]`` at position ``index`` of each sequence only.

        A classifier reads one position of the last block, so its query, attention output and
        MLP are needed there alone: about a sequence length's worth less work, same numbers.
        """
        rows = torch.arange(x.shape[0], device=x.device)
        # The first LayerNorm's scale and shift are applied inside the attention, per head.
        x_hat = F.layer_norm(x, self.norm1.normalized_shape, eps=self.norm1.eps)
        h = x[rows, index] + self.att.forward_at(x_hat, index, self.norm1.weight, self.norm1.bias)
        return h + self.ff(norm_rows(self.norm2, h))


# --------------------------------------------------------------------------- model

POOLINGS = ("last-real", "last", "mean")

# The way ``GPTModel.reset_parameters`` draws a random init. Stored random bases are found by
# it, so a change of the draw must change it: a base drawn the old way is then drawn again, never
# taken for the new one. (1: module order, each residual projection drawn twice, the tied head
# drawn and discarded; 2: name order, each tensor once, 0.3 s less for gpt2-small.)
RANDOM_INIT_VERSION = 2


class GPTModel(nn.Module):
    """GPT-2. ``model(input_ids)`` returns logits ``[batch, tokens, out_dim]``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        # The layers are made on the meta device (no memory, no init) and materialised once,
        # so each weight is drawn once: PyTorch's per-layer default inits, all overwritten by
        # GPT-2's, cost about a second for gpt2-small. Built under ``torch.device("meta")``
        # (to receive a checkpoint's tensors with ``load_state_dict(assign=True)``), the model
        # stays there and is not initialised at all. Materialised with ``torch.empty``, not
        # ``to_empty``: that one passes meta tensors through PyTorch's Python references, which
        # import sympy and torch.fx's symbolic shapes, 0.3 s of a first run (1.8 s on a GPU
        # machine without a bytecode cache).
        device = torch.empty(()).device  # the default device, meta inside torch.device("meta")
        with on_meta_device():
            self.tok_emb = _embedding(cfg.vocab_size, cfg.emb_dim)
            self.pos_emb = _embedding(cfg.context_length, cfg.emb_dim)
            self.drop_emb = nn.Dropout(cfg.drop_rate)
            self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
            self.final_norm = nn.LayerNorm(cfg.emb_dim, eps=cfg.ln_eps)
            self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.out_head.weight = self.tok_emb.weight  # weight tying, as GPT-2 was trained
        if device.type != "meta":
            self.materialize(device)
            self.reset_parameters()

    def materialize(self, device: torch.device | str | None = None) -> GPTModel:
        """Memory on ``device`` (the default one) for a model made on the meta device; its
        values are whatever the memory held until ``reset_parameters`` draws them."""
        self._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))
        self.out_head.weight = self.tok_emb.weight  # ``_apply`` gave each of the pair its own tensor
        return self

    def reset_parameters(self, drawn: Callable[[str, torch.Tensor], None] | None = None) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights and embeddings, zero biases, unit
        LayerNorms, and N(0, 0.02 / sqrt(2 * n_layers)) for the projections that write into
        the residual stream.

        Each tensor is set once (the tied output head is the token embedding), in name order:
        the order a base's hash reads them (``spamtune.bases``). ``drawn(name, tensor)`` is
        called as each one is final, so that a caller can hash and store it while the next
        ones are drawn. ``RANDOM_INIT_VERSION`` names this way of drawing."""
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        owners = {
            f"{prefix}.{name}" if prefix else name: module
            for prefix, module in self.named_modules()
            for name, _ in module.named_parameters(recurse=False)
        }
        with torch.no_grad():
            for name, param in sorted(self.named_parameters(), key=lambda item: item[0]):
                if name.endswith("bias"):
                    param.zero_()
                elif isinstance(owners[name], nn.LayerNorm):
                    param.fill_(1.0)
                elif name.endswith(("att.out_proj.weight", "ff.proj.weight")):
                    param.normal_(0.0, residual_std)
                else:
                    param.normal_(0.0, 0.02)
                if drawn is not None:
                    drawn(name, param)

    @property
    def num_classes(self) -> int:
        return self.out_head.out_features

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Token plus position embeddings; ``positions`` (default ``0..t-1``) lets sequences
        continue after cached ones."""
        if positions is None:
            t = input_ids.shape[1]
            if t > self.cfg.context_length:
                raise SpamtuneError(
                    f"input of {t} tokens exceeds the model's context length {self.cfg.context_length}"
                )
            positions = torch.arange(t, device=input_ids.device)
        return self.drop_emb(self.tok_emb(input_ids) + self.pos_emb(positions))

    def hidden_states(self, input_ids: torch.Tensor, start_block: int = 0, x: torch.Tensor | None = None):
        """Residual stream after the last block (before the final LayerNorm).

        ``start_block``/``x`` resume from the output of block ``start_block - 1``, which lets a
        caller reuse cached outputs of frozen blocks.
        """
        if x is None:
            x = self.embed(input_ids)
        for block in self.trf_blocks[start_block:]:
            x = block(x)
        return x

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.out_head(self.final_norm(self.hidden_states(input_ids)))

    def classify(
        self,
        input_ids: torch.Tensor | None,
        lengths: torch.Tensor | None = None,
        pooling: str = "last-real",
        *,
        prefix: torch.Tensor | None = None,
        start_block: int = 0,
        last_query_only: bool = True,
    ) -> torch.Tensor:
        """Class logits ``[batch, num_classes]`` from one pooled position per sequence.

        Sequences are right-padded; ``lengths`` holds each one's real token count. With causal
        attention, real tokens never see the padding after them, so ``last-real`` and ``mean``
        give the same logits whatever a message is batched with. ``last`` reads the padded final
        position, as the book's chapter 6 does.

        ``prefix``/``start_block`` resume from cached outputs of blocks ``< start_block``
        (``prefix`` replaces ``input_ids``). For ``last``/``last-real`` the final block is run at
        the pooled position only (``TransformerBlock.forward_at``); ``last_query_only=False``
        runs the plain full forward instead (the reference the shortcuts are tested against).
        """
        x = self.embed(input_ids) if prefix is None else prefix
        b, t = x.shape[:2]
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=x.device)
        lengths = lengths.to(x.device)
        if pooling == "mean" or not last_query_only or start_block >= self.cfg.n_layers:
            h = self.hidden_states(None, start_block=start_block, x=x)
            return self.out_head(pool_hidden(self.final_norm, h, lengths, pooling))
        if pooling not in POOLINGS:
            raise SpamtuneError(f"unknown pooling '{pooling}'; choose one of: {', '.join(POOLINGS)}")
        for block in self.trf_blocks[start_block:-1]:
            x = block(x)
        index = lengths - 1 if pooling == "last-real" else torch.full_like(lengths, t - 1)
        with _fp32_training_step_on_cpu(x):
            h = norm_rows(self.final_norm, self.trf_blocks[-1].forward_at(x, index))
            # A plain head through spamtune.linear: MKL's product for its input gradient rounds
            # differently on one thread than on two (``spamtune.row_norm`` says why that matters).
            return apply_linear(self.out_head, h) if type(self.out_head) is nn.Linear else self.out_head(h)


def _fp32_training_step_on_cpu(x: torch.Tensor):
    """No autocast for a CPU training step of the final block at one query per sequence.

    There its products have a batch's few rows (8 in the book's recipe): bf16 saves nothing
    at that size, autocast casts the block's 7 M trainable weights again at every step, and
    the fp32 path has oneDNN's products and the folded attention's own backward. A bf16
    step of the book's recipe from the prefix cache took ~14 ms, an fp32 one ~12 ms, on the
    2-core EPYC (the bf16 recipe's 655 steps: 14.0 s -> 11.6 s). The cached or bf16 frozen
    blocks before it keep the run's precision, as do evaluation and prediction.
    """
    if x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu"):
        return torch.autocast("cpu", enabled=False)
    return contextlib.nullcontext()


def pool_hidden(final_norm: nn.Module, h: torch.Tensor, lengths: torch.Tensor | None, pooling: str):
    """Normalised pooled representation ``[batch, emb_dim]`` (the head is applied after)."""
    b, t, _ = h.shape
    if lengths is None:
        lengths = torch.full((b,), t, device=h.device, dtype=torch.long)
    if pooling == "last":
        return final_norm(h[:, -1, :])
    if pooling == "last-real":
        return final_norm(h[torch.arange(b, device=h.device), lengths.to(h.device) - 1])
    if pooling == "mean":
        mask = (torch.arange(t, device=h.device)[None, :] < lengths.to(h.device)[:, None]).to(h.dtype)
        return (final_norm(h) * mask[..., None]).sum(1) / lengths.to(h.device, h.dtype)[:, None]
    raise SpamtuneError(f"unknown pooling '{pooling}'; choose one of: {', '.join(POOLINGS)}")


def _embedding(num_embeddings: int, embedding_dim: int) -> nn.Embedding:
    """``nn.Embedding`` without its default init, which ``GPTModel.reset_parameters`` replaces
    (on the meta device that init would also import torch._dynamo: a second of start-up)."""
    return nn.Embedding(num_embeddings, embedding_dim, _weight=torch.empty(num_embeddings, embedding_dim))


# --------------------------------------------------------------------------- classifier surgery

_LAST_N = re.compile(r"^last-(\d+)-blocks?$")


@dataclass(frozen=True)
class Trainable:
    """What a preset trains, parsed once: the head always; blocks ``first_block`` to the end;
    the final LayerNorm with any block; the embeddings only for ``all``.

    ``first_block`` is also how many leading blocks stay frozen, which is what the prefix
    cache needs to know."""

    preset: str
    first_block: int
    final_norm: bool
    embeddings: bool

    @classmethod
    def parse(cls, preset: str, n_layers: int) -> Trainable:
        """``head``, ``last-block``, ``last-N-blocks`` or ``all`` for a model of ``n_layers`` blocks."""
        if preset == "head":
            blocks = 0
        elif preset == "last-block":
            blocks = 1
        elif preset == "all":
            blocks = n_layers
        elif match := _LAST_N.match(preset):
            blocks = int(match.group(1))
            if blocks < 1:
                raise OptionError("trainable", f"{{option}} {preset} trains no block: use head for the head alone")
            if blocks > n_layers:
                raise OptionError("trainable", f"{{option}} {preset}: the model has only {n_layers} blocks")
        else:
            raise OptionError(
                "trainable",
                f"unknown {{option}} preset '{preset}'; choose head, last-block, last-N-blocks (e.g. last-2-blocks), all or lora",
            )
        return cls(preset, n_layers - blocks, final_norm=blocks > 0, embeddings=preset == "all")


def convert_to_classifier(
    model: GPTModel, num_classes: int = 2, trainable: str | Trainable = "last-block", seed: int = 123
) -> GPTModel:
    """Listing 6.7 of the book, as one function.

    Freeze the pretrained model, swap the vocabulary head for ``Linear(emb_dim, num_classes)``
    (seeded, so the new head starts the same every run), and unfreeze what ``trainable`` names:
    ``head``; ``last-block`` = head + last block + final LayerNorm (the book's choice);
    ``last-N-blocks``; or ``all``.
    """
    if isinstance(trainable, str):
        trainable = Trainable.parse(trainable, model.cfg.n_layers)
    model.requires_grad_(False)
    torch.manual_seed(seed)
    model.out_head = nn.Linear(model.cfg.emb_dim, num_classes)
    for block in model.trf_blocks[trainable.first_block :]:
        block.requires_grad_(True)
    model.final_norm.requires_grad_(trainable.final_norm)
    model.tok_emb.requires_grad_(trainable.embeddings)
    model.pos_emb.requires_grad_(trainable.embeddings)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied weight counts once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
