"""LoRA: fine-tune a frozen GPT-2 through small low-rank updates of its Linear layers.

Each adapted layer keeps its pretrained weight ``W`` frozen and learns ``A`` (``rank x in``)
and ``B`` (``out x rank``); it computes ``W x + b + (alpha / rank) * B (A x)``. ``B`` starts at
zero, so the adapted model starts out computing exactly what the base model does, and ``A``
starts random so that ``B``'s first gradients are not zero. With rank 16 on the four Linear
layers of every gpt2-small block that is 2.4 M trainable numbers instead of 85 M (the book's
appendix E: LoRA matched full fine-tuning on the SMS split).

``LoRALinear`` is an ``nn.Linear`` with two extra parameters, so the model's state-dict keys
for the base weights do not change and everything that reads ``layer.weight`` still finds
the base weight. ``merge_lora`` folds the update into plain ``nn.Linear`` layers, giving an
ordinary classifier for export and for prediction at full speed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spamtune.errors import OptionError, SpamtuneUsageError
from spamtune.model import GPTConfig, GPTModel, Trainable, convert_to_classifier, is_integer, is_real

DEFAULT_RANK = 16
DEFAULT_ALPHA = 16.0
# The Linear layers of a transformer block that LoRA adapts: attention (fused query/key/value,
# output projection) and the MLP's two layers. LayerNorms stay frozen.
ADAPTED_LAYERS = ("att.qkv", "att.out_proj", "ff.fc", "ff.proj")


def merged_lora_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """``W + scale * B @ A`` in ``W``'s dtype: one formula for the layer, merging and export, so
    a merged model and a run rebuilt from its A/B tensors hold the same numbers."""
    return weight + ((lora_b @ lora_a) * scale).to(weight.dtype)


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a trainable low-rank update ``scale * B @ A`` of its frozen weight."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rank: int, alpha: float, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.rank = rank
        self.alpha = float(alpha)
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def wrap(cls, linear: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None) -> LoRALinear:
        """An adapted layer sharing ``linear``'s weight and bias (frozen), with ``B = 0``."""
        # Built on the meta device: the base weight is taken over, so drawing a fresh one first
        # would only cost time (seconds for gpt2-xl).
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, rank=rank, alpha=alpha, device="meta")
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.weight.requires_grad_(False)
        if layer.bias is not None:
            layer.bias.requires_grad_(False)
        # A and B are trained, so they stay fp32 even where the frozen weight was cast to 16 bits.
        dtype = torch.promote_types(linear.weight.dtype, torch.float32)
        layer.lora_a = nn.Parameter(torch.empty(rank, linear.in_features, device=linear.weight.device, dtype=dtype))
        layer.lora_b = nn.Parameter(torch.zeros(linear.out_features, rank, device=linear.weight.device, dtype=dtype))
        # nn.Linear's own init (Kaiming-uniform with a = sqrt(5)): bound 1/sqrt(in_features).
        bound = 1 / math.sqrt(linear.in_features)
        with torch.no_grad():
            sample = torch.rand(rank, linear.in_features, generator=generator) * (2 * bound) - bound
            layer.lora_a.copy_(sample)
        return layer

    def merged_weight(self) -> torch.Tensor:
        """The weight this layer applies: the base plus the update, in the base's dtype."""
        return merged_lora_weight(self.weight, self.lora_a, self.lora_b, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin products rather than one with the merged weight: the frozen base then needs
        # no weight gradient, only A and B do (rank x (in + out) numbers per layer).
        update = F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return F.linear(x, self.weight, self.bias) + update * self.scale

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this layer computes (the update merged in)."""
        with torch.device("meta"):
            plain = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        with torch.no_grad():
            plain.weight = nn.Parameter(self.merged_weight().detach().clone(), requires_grad=False)
            if self.bias is not None:
                plain.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return plain

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


# The bounds of the update's scale, alpha / rank. AdamW moves every number of B by about the
# learning rate each step, whatever the size of its gradient, so the scale multiplies the learning
# rate of the adapted weights: the two trade one for the other, and what a scale beyond these
# bounds would train, a learning rate within them trains too. Past the upper bound the first steps move the
# adapted weights by more than their own size and the update drowns the base: on the tiny model at
# the default learning rate a scale of 128 trained as 1 does (82% against 81% after an epoch),
# 256 barely (58%), 625 not at all; and at alpha 1e30 (a scale of 6e28) the gradient's square
# overflows fp32 in AdamW's second moment, so B never moved and the run trained nothing, silently.
# Below the lower bound the update learns more than a thousand times slower than the head beside it.
MIN_LORA_SCALE = 2.0**-10
MAX_LORA_SCALE = 2.0**7


def check_lora_options(rank: int, alpha: float, blocks: int | None, n_layers: int, emb_dim: int) -> None:
    """One usage error per bad LoRA option. Every adapted layer has ``emb_dim`` inputs or
    outputs, so a rank above it adds parameters (A and B are allocated at once) and no expressive
    power: it is refused as well; so is an ``alpha / rank`` outside the bounds above."""
    if not is_integer(rank) or rank < 1:
        raise OptionError("lora_rank", f"must be a positive integer (got {rank})")
    if rank > emb_dim:
        raise OptionError("lora_rank", f"must be at most the model's width, {emb_dim}, which a full-rank update reaches (got {rank})")
    if not (is_real(alpha) and alpha > 0):
        raise OptionError("lora_alpha", f"must be a positive number (got {alpha})")
    scale = alpha / rank
    if not MIN_LORA_SCALE <= scale <= MAX_LORA_SCALE:
        beyond, effect = (
            (f"above {MAX_LORA_SCALE:g}", "drown the base model") if scale > MAX_LORA_SCALE
            else (f"below 1/{1 / MIN_LORA_SCALE:g}", "barely train")
        )  # fmt: skip
        raise OptionError(
            "lora_alpha",
            f"{{option}} {alpha:g} at rank {rank} scales the update by alpha/rank = {scale:.3g}, {beyond}: AdamW moves the "
            f"update by about the learning rate times that scale each step, so it would {effect}; keep alpha between "
            f"{rank * MIN_LORA_SCALE:.12g} and {rank * MAX_LORA_SCALE:.12g} at this rank and set the pace with the learning rate",
        )
    if blocks is not None and not (is_integer(blocks) and 1 <= blocks <= n_layers):
        raise OptionError("lora_blocks", f"must be between 1 and the model's {n_layers} blocks (got {blocks})")


def adapted_block_indices(n_layers: int, blocks: int | None) -> range:
    """The blocks LoRA adapts: the last ``blocks`` of them, or all (``None``)."""
    return range(n_layers - (n_layers if blocks is None else blocks), n_layers)


def apply_lora(
    model: GPTModel,
    rank: int = DEFAULT_RANK,
    alpha: float = DEFAULT_ALPHA,
    blocks: int | None = None,
    seed: int = 123,
) -> GPTModel:
    """Put LoRA on the attention and MLP Linear layers of the last ``blocks`` blocks (all if
    None), in place. Only the new A/B matrices are trainable among the blocks' parameters; what
    else is trainable (the head) is left as it was. ``A`` is drawn from a generator seeded with
    ``seed``, so a run starts the same every time."""
    check_lora_options(rank, alpha, blocks, model.cfg.n_layers, model.cfg.emb_dim)
    generator = torch.Generator().manual_seed(seed)
    for i in adapted_block_indices(model.cfg.n_layers, blocks):
        block = model.trf_blocks[i]
        block.requires_grad_(False)
        for path in ADAPTED_LAYERS:
            parent_name, name = path.split(".")
            parent = getattr(block, parent_name)
            current = getattr(parent, name)
            if isinstance(current, LoRALinear):
                raise SpamtuneUsageError(f"block {i} already has LoRA on {path}")
            setattr(parent, name, LoRALinear.wrap(current, rank, alpha, generator))
    return model


def convert_to_lora_classifier(
    model: GPTModel,
    num_classes: int = 2,
    rank: int = DEFAULT_RANK,
    alpha: float = DEFAULT_ALPHA,
    blocks: int | None = None,
    seed: int = 123,
) -> GPTModel:
    """The book's surgery (new 2-class head, everything else frozen) with LoRA on top: the
    head and the A/B matrices are what trains."""
    convert_to_classifier(model, num_classes, trainable="head", seed=seed)
    return apply_lora(model, rank, alpha, blocks, seed)


def lora_trainable(n_layers: int, blocks: int | None = None) -> Trainable:
    """What a LoRA run trains, as the rest of spamtune reads it: the head and A/B in the last
    ``blocks`` blocks; the blocks before them are frozen whole, so the prefix cache serves them."""
    return Trainable("lora", n_layers - (n_layers if blocks is None else blocks), final_norm=False, embeddings=False)


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def lora_parameter_count(cfg: GPTConfig, rank: int, blocks: int | None = None) -> int:
    """A/B numbers LoRA adds: ``rank * (in + out)`` per layer. Per block the four layers are
    ``d -> 3d``, ``d -> d``, ``d -> 4d`` and ``4d -> d``: ``rank * 16 * d`` in all."""
    n = cfg.n_layers if blocks is None else blocks
    return n * rank * 16 * cfg.emb_dim


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` with the plain ``nn.Linear`` it amounts to, in place.

    The result has the state-dict keys of a model without LoRA, so it saves, loads and predicts
    as any classifier does; its outputs equal the adapted model's up to float rounding.
    """
    for name, layer in lora_layers(model):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.to_linear())
    return model


def has_lora(model: nn.Module) -> bool:
    return any(True for _ in lora_layers(model))
