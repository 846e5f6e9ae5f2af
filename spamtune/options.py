"""The choices of a fine-tuning run and of a data preparation: one dataclass each, with the
defaults and the help text of every field.

They are the single source of both: the library takes them as they are, and the CLI builds its
options (flags, defaults, ``--help``) from these fields, so a default is written once. This
module imports nothing heavy: ``spamtune --help`` reads it.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from spamtune.errors import OptionError, SpamtuneError

if TYPE_CHECKING:
    from spamtune.model import GPTConfig, Trainable

# How a message longer than the model's window is read (see spamtune.long_messages). Named
# here, with no email or torch import, so the CLI's options can list them. Mail defaults to
# chunks, the most accurate on long mail (benchmarks/mail_bench.py); lines of text and prepared
# splits keep the head, as training reads them.
LONG_MODES = ("head", "head-tail", "chunks")
DEFAULT_LONG = "chunks"
TEXT_LONG = "head"

WEIGHT_SOURCES = ("pretrained", "random")
SCHEDULES = ("constant", "cosine", "linear")  # learning-rate schedules (spamtune.schedule)
BALANCE_MODES = ("undersample", "none")
CLASS_WEIGHTS = ("none", "balanced")
STRATEGIES = ("ddp", "fsdp")  # how several ranks share a run (spamtune.distributed, spamtune.fsdp)


def option(default, help: str, **cli) -> field:
    """A dataclass field with its help text; ``cli`` holds what only the command line needs:
    ``choices`` it checks itself, a ``flag`` other than the field's name."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class FinetuneOptions:
    """Every choice of a fine-tuning run, with the book's defaults. Saved as ``hparams.json``."""

    model: str = option("gpt2-small", "Named size (gpt2-small, gpt2-medium, ..., tiny) or a JSON config file.")
    weights: str = option("pretrained", "pretrained (needs `spamtune download model NAME`) or random.")
    trainable: str = option("last-block", "head, last-block, last-N-blocks (e.g. last-2-blocks), all, or lora.")
    lora_rank: int = option(16, "With lora: rank of each low-rank update.")
    lora_alpha: float = option(16.0, "With lora: the update is scaled by alpha / rank.")
    lora_blocks: int | None = option(None, "With lora: adapt only the last N blocks (default: all); the prefix cache serves the rest.")
    pooling: str = option("last-real", "last-real (last non-padding token), last (the book's) or mean.")
    epochs: int = option(5, "Passes over the training split.")
    batch_size: int = option(8, "Messages per batch.")
    lr: float = option(5e-5, "AdamW learning rate.")
    weight_decay: float = option(0.1, "AdamW weight decay.")
    schedule: str = option("constant", "Learning-rate schedule: constant (the book's), cosine or linear decay to zero.", choices=SCHEDULES)
    warmup_steps: int = option(0, "Rise linearly to the learning rate over this many optimizer steps first.")
    clip_grad_norm: float | None = option(None, "Clip the gradients' global L2 norm to this value (default: no clipping).")
    seed: int = option(123, "Seed for the head, random init and batch order.")
    max_length: int | None = option(
        None, "Tokens kept per message (start kept). Default: longest training message, capped by the context."
    )
    grad_accum: int = option(1, "Batches per optimizer step.")
    eval_every: int | None = option(None, "Also evaluate every N steps (default: once per epoch).")
    patience: int | None = option(None, "Stop after N evaluations without a lower validation loss.")
    device: str = option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda or mps.")
    precision: str = option("auto", "auto, fp32, bf16 (CPU/CUDA) or fp16 (CUDA).")
    strategy: str = option(
        "ddp",
        "With several processes (--devices, torchrun): ddp keeps a whole copy of the model, its gradients and "
        "optimizer state on each; fsdp shards the trained weights, their gradients and AdamW's state across them "
        "(for training that does not fit one device, e.g. gpt2-xl with --trainable all). One process trains plainly with either.",
        choices=STRATEGIES,
    )
    data_dir: str = option("data", "Data root (default: $SPAMTUNE_HOME or ./data).")
    class_weights: str = option(
        "none",
        "none, or balanced: weight each class's training loss by n / (classes x its count), so that a "
        "rare class (spam in the natural mix) counts as much as a common one without discarding data.",
        choices=CLASS_WEIGHTS,
    )
    # Off gives the plain forward pass, the reference the shortcuts are tested against.
    shortcuts: bool = option(
        True, "Exact speed-ups: compute frozen blocks once (prefix cache) and run the last block at the pooled token only."
    )
    keep_cache: bool = option(
        True, "Keep the prefix cache under <data root>/cache, so later runs on the same data and base skip building it."
    )
    # On by default: a last-block gpt2-small run is then ~30 MB instead of 0.5 GB (6 GB for xl),
    # and every run on a base shares the one copy of it.
    compact: bool = option(
        True,
        "Write only the tensors training changed, with a reference to the base (stored once under <data root>/bases); "
        "--no-compact writes a standalone model.safetensors instead.",
    )


# Options a resumed run may take afresh: where the data is (its fingerprint is checked), where to
# compute, and how ranks share the work (the resume state is the same whatever the strategy).
# Every other option is the run's own.
# Poolings whose final block runs at the pooled position alone with the shortcuts on
# (``TransformerBlock.forward_at``): a training step of that block then gives the same numbers
# on any thread count.
FOLDED_POOLINGS = ("last-real", "last")
_FINAL_BLOCK_PRESETS = ("last-block", "last-1-blocks", "last-1-block")


def trains_final_block_alone(trainable: str, pooling: str, shortcuts: bool) -> bool:
    """Whether options train the final block at the pooled position (and the head) and nothing
    else: what ``spamtune finetune`` can tell before the model is built. ``train``'s
    ``steps_agree_across_threads`` says the same of a built run, for any preset."""
    return shortcuts and pooling in FOLDED_POOLINGS and trainable in _FINAL_BLOCK_PRESETS


def as_typed(value) -> str:
    """An option's value as the command line spells it: ``none``, ``true``, ``5e-05``."""
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def recorded_model(spec: str) -> str:
    """A ``model`` option as a run records it: a JSON config file's path made absolute, so that
    ``finetune --config RUN`` reads that same file from any directory (a relative one named no
    file there, or another of that name); a named size as it is."""
    from spamtune.model_names import names_config_file

    if names_config_file(spec):
        from spamtune import paths

        return str(paths.absolute(spec))
    return spec


RESUMABLE_CHANGES = ("device", "data_dir", "strategy")
LORA_OPTIONS = ("lora_rank", "lora_alpha", "lora_blocks")  # read only by a run that trains lora
# Options added after runs were first saved, with the value an older run's training had: its
# hparams.json lacks them. (compact has been on by default since; the runs before it were full.)
ADDED_OPTIONS = {
    "class_weights": "none", "lora_rank": 16, "lora_alpha": 16.0, "lora_blocks": None, "schedule": "constant",
    "warmup_steps": 0, "clip_grad_norm": None, "keep_cache": True, "compact": False, "strategy": "ddp",
}  # fmt: skip


# What each field's type (as the dataclass spells it) takes from a JSON file. bool is an int to
# Python, so it is told apart first: ``true`` is no epoch count.
_JSON_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
_TYPE_WORDS = {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false", "None": "null"}


def options_in_record(record: dict, source: Path, names: list[str]) -> dict:
    """The fields ``names`` of a saved run's options (its ``hparams.json``) that ``record``
    holds, each of its field's type: a hand-edited ``"warmup_steps": "5"`` or ``"epochs": true``
    is one error naming the file and the field, rather than a confusing one later."""
    types = {f.name: str(f.type) for f in fields(FinetuneOptions)}
    out = {}
    for name in names:
        if name not in record:
            continue
        value, kinds = record[name], types[name].split(" | ")
        if value is None:
            ok = "None" in kinds
        elif isinstance(value, bool):
            ok = "bool" in kinds
        else:
            ok = any(isinstance(value, _JSON_TYPES[kind]) for kind in kinds if kind != "None")
        if not ok:
            wanted = " or ".join(_TYPE_WORDS[kind] for kind in kinds)
            raise SpamtuneError(f"{source}: \"{name}\" must be {wanted}, not {json.dumps(value)}")
        if kinds[0] == "float" and value is not None:
            try:
                value = float(value)
            except OverflowError:  # a whole number past a float's range, which JSON allows
                raise SpamtuneError(
                    f"{source}: \"{name}\" must be a number a float can hold (at most ~1.8e308), "
                    f"not a {len(str(abs(value)))}-digit whole number"
                ) from None
        out[name] = value
    return out


@contextlib.contextmanager
def blamed_on_record(source: Path, read_from_it: Collection[str]) -> Iterator[None]:
    """An ``OptionError`` raised inside about one of the options ``read_from_it``, values read
    from the saved run options in ``source`` (a resumed run's hparams.json, a --config file),
    becomes one line naming the file and the field, rather than a flag the user never typed,
    with exit status 1 (the file is at fault, not the command line). Errors about options given
    on the command line pass unchanged."""
    try:
        yield
    except OptionError as exc:
        if exc.option not in read_from_it:
            raise
        raise SpamtuneError(f"{source}: {exc.naming(json.dumps(exc.option))}") from None


# What torch.manual_seed (and a torch.Generator) takes: any 64-bit pattern, read as unsigned
# or, below zero, as signed. A seed outside it fails only once training has begun.
SEED_RANGE = (-(2**63), 2**64 - 1)


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise OptionError(name, message)


def validate_options(options: FinetuneOptions, model_cfg: GPTConfig | None = None) -> tuple[GPTConfig, Trainable]:
    """One clear error per bad option, before anything is read or built; returns the model's
    shape and the parsed ``trainable`` preset."""
    from spamtune.device import PRECISIONS
    from spamtune.model import POOLINGS, GPTConfig, Trainable

    o = options
    _require(o.epochs >= 1, "epochs", f"must be at least 1 (got {o.epochs})")
    _require(
        SEED_RANGE[0] <= o.seed <= SEED_RANGE[1], "seed",
        f"must be between {SEED_RANGE[0]} and {SEED_RANGE[1]} (got {o.seed})",
    )  # fmt: skip
    _require(o.batch_size >= 1, "batch_size", f"must be at least 1 (got {o.batch_size})")
    _require(math.isfinite(o.lr) and o.lr > 0, "lr", f"must be a positive number (got {o.lr})")
    _require(math.isfinite(o.weight_decay) and o.weight_decay >= 0, "weight_decay", f"must be >= 0 (got {o.weight_decay})")
    _require(o.grad_accum >= 1, "grad_accum", f"must be at least 1 (got {o.grad_accum})")
    _require(o.eval_every is None or o.eval_every >= 1, "eval_every", f"must be at least 1 step (got {o.eval_every})")
    _require(o.patience is None or o.patience >= 1, "patience", f"must be at least 1 evaluation (got {o.patience})")
    for name, value, choices in (("weights", o.weights, WEIGHT_SOURCES), ("pooling", o.pooling, POOLINGS), ("precision", o.precision, PRECISIONS), ("class_weights", o.class_weights, CLASS_WEIGHTS), ("strategy", o.strategy, STRATEGIES)):
        _require(value in choices, name, f"unknown {{option}} '{value}'; choose one of: {', '.join(choices)}")
    from spamtune.schedule import check_schedule_options

    check_schedule_options(o.schedule, o.warmup_steps, o.clip_grad_norm)
    cfg = model_cfg or GPTConfig.resolve(o.model)
    _require(
        not (o.strategy == "fsdp" and o.trainable == "lora"), "strategy",
        "{option} fsdp shards the training state of whole weights; LoRA's is small: use --strategy ddp with --trainable lora",
    )  # fmt: skip
    if o.trainable == "lora":
        from spamtune.lora import check_lora_options, lora_trainable

        check_lora_options(o.lora_rank, o.lora_alpha, o.lora_blocks, cfg.n_layers, cfg.emb_dim)
        trainable = lora_trainable(cfg.n_layers, o.lora_blocks)
    else:
        trainable = Trainable.parse(o.trainable, cfg.n_layers)
    if o.max_length is not None:
        _require(o.max_length >= 1, "max_length", f"must be at least 1 (got {o.max_length})")
        _require(
            o.max_length <= cfg.context_length,
            "max_length",
            f"{{option}} {o.max_length} exceeds the model's context length {cfg.context_length}",
        )
    if o.weights == "pretrained":
        pretrained_weights_file(cfg, o.model, Path(o.data_dir))
    return cfg, trainable


def pretrained_weights_file(cfg: GPTConfig, spec: str, root: Path) -> Path:
    """The downloaded GPT-2 weights for ``cfg``, or a one-line error saying how to get them."""
    from spamtune import paths
    from spamtune.errors import SpamtuneError
    from spamtune.model_names import PRETRAINED_SIZES

    name = cfg.name
    if name not in PRETRAINED_SIZES:
        raise OptionError(
            "weights",
            f"there are no pretrained weights for model '{spec}' (OpenAI released {', '.join(PRETRAINED_SIZES)}); "
            "use {option} random",
        )
    found = paths.find_pretrained_weights(root, name)
    if found is None:
        raise SpamtuneError(
            f"no pretrained {name} weights in {paths.models_dir(root)} or the Hugging Face cache; "
            f"run `spamtune download model {name}` or use random weights"
        )
    return found


@dataclass
class PrepareOptions:
    """How labelled texts become splits; the defaults are the book's chapter-6 recipe."""

    balance: str = option(
        "undersample",
        "undersample: cut every label to the rarest one's count (the book's recipe); "
        "none: keep every row, cut per label (stratified) so each split has the natural class mix.",
        choices=BALANCE_MODES,
    )
    split: tuple[float, float, float] = option((0.7, 0.1, 0.2), "Train, validation and test fractions; they must sum to 1.")
    seed: int = option(123, "Random state of the undersampling and the shuffle.")  # the book's random_state
    stratify: bool = option(False, "Cut each label separately so every split keeps the label proportions.", flag="--stratify")
    dedupe: bool = option(False, "Drop repeated texts (keeping the first) before anything else.", flag="--dedupe")
    keep_label_case: bool = option(
        False,
        "Treat labels that differ only in case (Spam, spam) as different classes. Default: fold them to lower case.",
        flag="--keep-label-case",
    )
