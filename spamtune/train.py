"""Fine-tuning: the book's chapter-6 training loop, made reproducible, resumable and visible.

The recipe is the book's: build GPT-2, load its weights (or initialise it at random under the
seed), swap the head and freeze what the preset leaves frozen (``convert_to_classifier``),
then AdamW over the trainable parameters with cross-entropy on the pooled position. What is
added makes the result trustworthy:

* dynamic, length-bucketed batches whose order is rebuilt from (seed, epoch), so any epoch can
  be replayed exactly after a restart;
* loss and accuracy on the FULL train and validation splits at every evaluation (the book
  estimates them from 5 batches), one JSON line each in ``metrics.jsonl``;
* the best-on-validation weights kept as ``model.safetensors`` (what ``predict`` loads), and a
  ``resume/`` folder (trainable weights, the best ones so far, AdamW moments, RNG state, loop
  position, all in one atomically written safetensors file, no pickle) while the run is
  unfinished. The full model (mostly frozen weights that never change) is written once, when
  the run ends or is interrupted, not at every new best: 0.5 GB for gpt2-small, 6 GB for xl.

This module never prints: it reports through the ``on_event`` callback and returns values.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from spamtune import __version__, paths
from spamtune.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ClassifierConfig,
    check_state_shapes,
    save_classifier,
)
from spamtune.data import Split, bucketed_batches, pad_batch, read_label_map, read_split, sorted_batches
from spamtune.device import PRECISIONS, autocast_context, resolve_device, resolve_precision
from spamtune.errors import SpamtuneError, SpamtuneUsageError
from spamtune.fsutil import atomic_path, atomic_write_json, atomic_write_text, read_json
from spamtune.infer import batched_logits, pad_width
from spamtune.model import (
    PRETRAINED_SIZES,
    POOLINGS,
    GPTConfig,
    GPTModel,
    convert_to_classifier,
    count_parameters,
    trainable_blocks,
)
from spamtune.plots import plot_curves
from spamtune.prefix_cache import (
    FrozenPrefixCache,
    build_prefix_cache,
    cacheable_blocks,
    estimate_cache_bytes,
    memory_budget_bytes,
)
from spamtune.tokenizer import EOT_ID, encode_texts
from spamtune.weights import load_pretrained_weights

HPARAMS_FILE = "hparams.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"
RUN_FILES = (WEIGHTS_FILE, CONFIG_FILE, HPARAMS_FILE, METRICS_FILE, SUMMARY_FILE, CURVES_FILE)
RESUME_DIR = "resume"
RESUME_FILE = "state.safetensors"

WEIGHT_SOURCES = ("pretrained", "random")
# Evaluation batches are sorted by length and padded only to their own longest, so a large
# batch costs little padding; ``spamtune evaluate`` uses the same size by default.
EVAL_BATCH_SIZE = 64


# --------------------------------------------------------------------------- options


@dataclass
class FinetuneOptions:
    """Every choice of a fine-tuning run, with the book's defaults. Saved as ``hparams.json``."""

    model: str = "gpt2-small"
    weights: str = "pretrained"
    trainable: str = "last-block"
    pooling: str = "last-real"
    epochs: int = 5
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    seed: int = 123
    max_length: int | None = None  # None: the longest training example, capped by the context
    grad_accum: int = 1
    eval_every: int | None = None  # in optimizer steps; None: once per epoch
    patience: int | None = None  # evaluations without a better validation loss before stopping
    device: str = "auto"
    precision: str = "auto"
    data_dir: str = "data"
    # Exact speed-ups (issue 6): cache the frozen blocks' outputs once, and run the final block
    # at the pooled position only. Off gives the plain forward pass, for checking they agree.
    shortcuts: bool = True


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SpamtuneUsageError(message)


def validate_options(options: FinetuneOptions, model_cfg: GPTConfig | None = None) -> GPTConfig:
    """One clear error per bad option, before anything is read or built; returns the model shape."""
    o = options
    _check(o.epochs >= 1, f"--epochs must be at least 1 (got {o.epochs})")
    _check(o.batch_size >= 1, f"--batch-size must be at least 1 (got {o.batch_size})")
    _check(math.isfinite(o.lr) and o.lr > 0, f"--lr must be a positive number (got {o.lr})")
    _check(math.isfinite(o.weight_decay) and o.weight_decay >= 0, f"--weight-decay must be >= 0 (got {o.weight_decay})")
    _check(o.grad_accum >= 1, f"--grad-accum must be at least 1 (got {o.grad_accum})")
    _check(o.eval_every is None or o.eval_every >= 1, f"--eval-every must be at least 1 step (got {o.eval_every})")
    _check(o.patience is None or o.patience >= 1, f"--patience must be at least 1 evaluation (got {o.patience})")
    _check(o.weights in WEIGHT_SOURCES, f"unknown --weights '{o.weights}'; choose one of: {', '.join(WEIGHT_SOURCES)}")
    _check(o.pooling in POOLINGS, f"unknown pooling '{o.pooling}'; choose one of: {', '.join(POOLINGS)}")
    _check(o.precision in PRECISIONS, f"unknown precision '{o.precision}'; choose one of: {', '.join(PRECISIONS)}")
    cfg = model_cfg or GPTConfig.resolve(o.model)
    trainable_blocks(o.trainable, cfg.n_layers)  # raises for an unknown preset
    if o.max_length is not None:
        _check(o.max_length >= 1, f"--max-length must be at least 1 (got {o.max_length})")
        _check(
            o.max_length <= cfg.context_length,
            f"--max-length {o.max_length} exceeds the model's context length {cfg.context_length}",
        )
    if o.weights == "pretrained":
        pretrained_weights_file(cfg, o.model, Path(o.data_dir))
    return cfg


def pretrained_weights_file(cfg: GPTConfig, spec: str, root: Path) -> Path:
    """The downloaded GPT-2 weights for ``cfg``, or a one-line error saying how to get them."""
    name = cfg.name
    if name not in PRETRAINED_SIZES:
        raise SpamtuneUsageError(
            f"there are no pretrained weights for model '{spec}' (OpenAI released {', '.join(PRETRAINED_SIZES)}); "
            "use --weights random"
        )
    found = paths.find_pretrained_weights(root, name)
    if found is None:
        raise SpamtuneError(
            f"no pretrained {name} weights in {paths.models_dir(root)} or the Hugging Face cache; "
            f"run `spamtune download model {name}` or use --weights random"
        )
    return found


# --------------------------------------------------------------------------- data


@dataclass
class Batch:
    """Right-padded token ids (or, from a prefix cache, the frozen blocks' outputs for them),
    each row's real length, and the class labels."""

    input_ids: torch.Tensor | None
    lengths: torch.Tensor
    labels: torch.Tensor
    prefix: torch.Tensor | None = None  # [b, t, emb_dim], the output of block start_block - 1
    start_block: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def logits(self, model: GPTModel, pooling: str, last_query_only: bool = True) -> torch.Tensor:
        return model.classify(
            self.input_ids, self.lengths, pooling,
            prefix=self.prefix, start_block=self.start_block, last_query_only=last_query_only,
        )  # fmt: skip


@dataclass
class Examples:
    """One split, tokenised: token id lists and class indices."""

    tokens: list[list[int]]
    labels: list[int]
    cache: FrozenPrefixCache | None = None  # set by attach_prefix_caches

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    def batch(self, indices: list[int], device: torch.device | str = "cpu", pad_to: int | None = None) -> Batch:
        labels = torch.tensor([self.labels[i] for i in indices], dtype=torch.long, device=device)
        if self.cache is not None:
            prefix, lengths = self.cache.batch(indices, device)
            return Batch(None, lengths, labels, prefix, self.cache.start_block)
        ids, lengths = pad_batch([self.tokens[i] for i in indices], EOT_ID, device)
        if pad_to is not None and ids.shape[1] < pad_to:
            ids = F.pad(ids, (0, pad_to - ids.shape[1]), value=EOT_ID)
        return Batch(ids, lengths, labels)


@dataclass
class TrainingData:
    labels: dict[str, int]
    max_length: int
    train: Examples
    validation: Examples
    test: Examples
    fingerprint: str  # sha256 of labels.json and the split files: resume refuses changed data


def check_split_labels(split: Split, num_classes: int, source: Path) -> None:
    bad = next((y for y in split.labels if not 0 <= y < num_classes), None)
    if bad is not None:
        raise SpamtuneError(f"{source} has the label {bad}, but there are only {num_classes} classes (0-{num_classes - 1})")


def load_training_data(root: Path, context_length: int, max_length: int | None) -> TrainingData:
    """Read and tokenise the prepared splits of a data root.

    The default maximum length is the longest training message (as the book pads to it),
    capped by the model's context; longer messages in any split keep their first tokens.
    """
    labels = read_label_map(root)
    split_paths = {name: paths.split_file(root, name) for name in paths.SPLITS}
    for path in split_paths.values():
        if not path.is_file():
            raise SpamtuneError(f"split file not found: {path}; run `spamtune prepare` first")
    splits = {name: read_split(path) for name, path in split_paths.items()}
    for name, split in splits.items():
        if not len(split):
            raise SpamtuneError(f"{split_paths[name]} holds no examples")
        check_split_labels(split, len(labels), split_paths[name])
    if max_length is None:
        max_length = min(context_length, max(map(len, encode_texts(splits["train"].texts))))
    examples = {name: Examples(encode_texts(s.texts, max_length), s.labels) for name, s in splits.items()}
    digest = hashlib.sha256()
    for path in (paths.labels_file(root), *split_paths.values()):
        digest.update(path.read_bytes())
    return TrainingData(labels, max_length, examples["train"], examples["validation"], examples["test"], digest.hexdigest())


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled, length-bucketed batches of one epoch: a function of (seed, epoch) alone,
    so a resumed run replays exactly the order an uninterrupted one would have used."""
    return bucketed_batches(lengths, batch_size, random.Random(f"spamtune-epoch:{seed}:{epoch}"))


# --------------------------------------------------------------------------- model and steps


def build_model(cfg: GPTConfig, options: FinetuneOptions, num_classes: int) -> GPTModel:
    """The book's order: GPT-2, its weights (or a seeded random init), then the classifier surgery."""
    torch.manual_seed(options.seed)
    if options.weights == "pretrained":
        with torch.device("meta"):  # the file's tensors become the weights: no init to discard
            model = GPTModel(cfg)
        load_pretrained_weights(model, pretrained_weights_file(cfg, options.model, Path(options.data_dir)))
    else:
        model = GPTModel(cfg)
    return convert_to_classifier(model, num_classes, options.trainable, options.seed)


def classification_loss(model: GPTModel, batch: Batch, pooling: str, last_query_only: bool = True) -> torch.Tensor:
    """Mean cross-entropy of one batch: the whole forward pass of training."""
    return F.cross_entropy(batch.logits(model, pooling, last_query_only).float(), batch.labels)


class NonFiniteLoss(SpamtuneError):
    def __init__(self, value: float):
        super().__init__(f"the training loss became {value}")
        self.value = value


def optimizer_step(
    model: GPTModel,
    optimizer: torch.optim.Optimizer,
    batches: list[Batch],
    pooling: str,
    *,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    last_query_only: bool = True,
) -> float:
    """One AdamW update from one or more batches (gradient accumulation); returns the loss.

    Each batch's loss is weighted by its share of the examples, so accumulating k batches
    gives exactly the gradient of one batch k times as large. A NaN or infinite loss raises
    ``NonFiniteLoss`` before the weights are touched.
    """
    device = batches[0].labels.device
    optimizer.zero_grad(set_to_none=True)
    n = sum(len(b) for b in batches)
    total = torch.zeros((), device=device)
    for batch in batches:
        with autocast_context(precision, device):
            loss = classification_loss(model, batch, pooling, last_query_only) * (len(batch) / n)
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach()
    value = total.item()
    if not math.isfinite(value):
        raise NonFiniteLoss(value)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return value


def predict_logits(
    model: GPTModel,
    token_lists: list[list[int]],
    pooling: str,
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = EVAL_BATCH_SIZE,
    pad_to: int | None = None,
) -> torch.Tensor:
    """Class logits ``[n, num_classes]`` (fp32, CPU) in input order, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with autocast_context(precision, device):
            return batched_logits(model, token_lists, pooling, batch_size, EOT_ID, device, pad_to=pad_to)
    finally:
        model.train(was_training)


def evaluate_examples(
    model: GPTModel,
    examples: Examples,
    pooling: str,
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = EVAL_BATCH_SIZE,
    pad_to: int | None = None,
    last_query_only: bool = True,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over every example of a split, from its prefix cache when
    it has one; batches are sorted by length and padded only to their own longest."""
    logits = torch.empty(len(examples), model.num_classes, dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast_context(precision, device):
            for idx in sorted_batches(examples.lengths, batch_size):
                batch = examples.batch(idx, device, pad_to)
                logits[idx] = batch.logits(model, pooling, last_query_only).float().cpu()
    finally:
        model.train(was_training)
    labels = torch.tensor(examples.labels, dtype=torch.long)
    loss = F.cross_entropy(logits, labels).item()
    correct = int((logits.argmax(dim=1) == labels).sum())
    return loss, correct / len(labels)


# --------------------------------------------------------------------------- frozen-prefix cache


@dataclass(frozen=True)
class PrefixCacheReport:
    """What ``attach_prefix_caches`` did: blocks cached, for which splits, at what cost."""

    start_block: int  # the frozen blocks whose outputs are cached (0: none)
    splits: tuple[str, ...]
    nbytes: int
    seconds: float
    skipped: str | None = None  # why a split, or every split, runs the plain path


def attach_prefix_caches(
    model: GPTModel,
    data: TrainingData,
    options: FinetuneOptions,
    device: torch.device,
    precision: str,
    budget_bytes: int | None = None,
    on_building: Callable[[int], None] | None = None,
) -> PrefixCacheReport:
    """Compute the frozen blocks' outputs once for train, validation and test (the issue-6
    shortcut) and attach them to the splits, as far as memory allows.

    Exact: with dropout off and the first K blocks frozen, their output for a message is a
    fixed function of its tokens, and causal attention makes it independent of the padding it
    is batched with. Not used for ``last`` pooling, whose pooled position is a padding token
    that the cache does not hold. ``on_building(K)`` is called just before the K blocks run.
    """
    start = cacheable_blocks(model)
    if not options.shortcuts:
        return PrefixCacheReport(0, (), 0, 0.0, "turned off (--no-shortcuts)")
    if options.pooling == "last":
        return PrefixCacheReport(0, (), 0, 0.0, "not used with --pooling last, which reads a padding position the cache does not hold")
    if start == 0:
        return PrefixCacheReport(0, (), 0, 0.0, "not used: every block is trainable")
    budget = memory_budget_bytes(device) if budget_bytes is None else budget_bytes
    emb_dim = model.cfg.emb_dim
    # One cache for all splits, so a message found in several (the SMS data has such leaks)
    # is computed once; when that would not fit, the training split alone, read most often.
    for names in (paths.SPLITS, ("train",)):
        token_lists = [t for name in names for t in getattr(data, name).tokens]
        need = estimate_cache_bytes(token_lists, emb_dim)
        if need <= budget:
            break
    else:
        return PrefixCacheReport(
            0, (), 0, 0.0, f"not used: the training split needs {need / 2**20:,.0f} MiB, over the {budget / 2**20:,.0f} MiB budget"
        )
    if on_building:
        on_building(start)
    tick = time.perf_counter()
    cache = build_prefix_cache(
        model, token_lists, device=device, pad_id=EOT_ID, budget_bytes=budget, autocast=autocast_context(precision, device)
    )
    if cache is None:  # the device's free memory shrank meanwhile
        return PrefixCacheReport(0, (), 0, 0.0, "not used: out of memory budget")
    offset = 0
    for name in names:
        examples = getattr(data, name)
        examples.cache = cache.subset(offset, offset + len(examples))
        offset += len(examples)
    skipped = None if len(names) == len(paths.SPLITS) else "validation and test run the plain path (memory budget)"
    return PrefixCacheReport(start, tuple(names), cache.nbytes, time.perf_counter() - tick, skipped)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class TrainingStarted:
    run_dir: Path
    model: str
    start_step: int
    total_steps: int
    device: str
    precision: str
    trainable_params: int
    total_params: int
    n_train: int
    n_validation: int
    n_test: int
    max_length: int


@dataclass(frozen=True)
class PrefixCaching:
    """The frozen blocks' outputs are being computed once for every split."""

    start_block: int


@dataclass(frozen=True)
class StepDone:
    step: int
    total_steps: int
    epoch: int  # 1-based epoch this step belongs to
    loss: float
    examples_seen: int
    examples_per_s: float


@dataclass(frozen=True)
class EvaluationStarted:
    step: int
    split: str  # "train+validation" during training, "test" at the end


@dataclass(frozen=True)
class Evaluated:
    record: dict  # the metrics.jsonl line
    is_best: bool


Event = TrainingStarted | PrefixCaching | PrefixCacheReport | StepDone | EvaluationStarted | Evaluated


class TrainingInterrupted(SpamtuneError):
    """Ctrl-C: the run folder holds its last complete checkpoint and can be resumed; the best
    weights so far (``best_step``, None before the first evaluation) are its model.safetensors."""

    exit_code = 130

    def __init__(self, run_dir: Path, step: int, checkpoint_step: int, best_step: int | None = None):
        super().__init__(f"interrupted at step {step}")
        self.run_dir, self.step, self.checkpoint_step, self.best_step = run_dir, step, checkpoint_step, best_step


# --------------------------------------------------------------------------- run folders


def new_run_dir(root: Path, model: str, trainable: str) -> Path:
    """A fresh ``<root>/runs/<timestamp>-<model>-<trainable>``, never an existing folder."""
    base = paths.runs_dir(root) / f"{datetime.now():%Y%m%d-%H%M%S}-{model}-{trainable}"
    for attempt in range(1, 1000):
        candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise SpamtuneError(f"cannot create run folder {candidate}: {exc.strerror or exc}") from None
    raise SpamtuneError(f"cannot find a free run folder name beside {base}")


def claim_run_dir(out: Path) -> Path:
    """Use ``--out`` only if it is new or empty: a run never overwrites another."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpamtuneError(
            f"{out} already exists and is not empty; choose another --out, "
            f"or continue an unfinished run with `spamtune finetune --resume {out}`"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpamtuneError(f"cannot create run folder {out}: {exc.strerror or exc}") from None
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_hparams(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / HPARAMS_FILE, "run hyperparameters")


# --------------------------------------------------------------------------- the loop


@dataclass
class LoopState:
    """Where training stands; saved with every checkpoint so a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0  # epochs completed
    steps_in_epoch: int = 0  # optimizer steps done in the epoch under way
    examples_seen: int = 0
    best_val_loss: float | None = None
    best_val_acc: float | None = None
    best_step: int | None = None
    best_epoch: float | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    elapsed_s: float = 0.0
    training_time_s: float = 0.0

    def is_better(self, val_loss: float, val_acc: float) -> bool:
        """Lowest validation loss wins; on a tie, the higher accuracy."""
        if self.best_val_loss is None:
            return True
        return val_loss < self.best_val_loss or (val_loss == self.best_val_loss and val_acc > self.best_val_acc)


@dataclass
class _Setup:
    options: FinetuneOptions
    model_cfg: GPTConfig
    device: torch.device
    precision: str
    data: TrainingData
    run_dir: Path
    started: float  # perf_counter() when this session began

    @property
    def steps_per_epoch(self) -> int:
        batches = math.ceil(len(self.data.train) / self.options.batch_size)
        return math.ceil(batches / self.options.grad_accum)

    @property
    def total_steps(self) -> int:
        return self.options.epochs * self.steps_per_epoch

    @property
    def model_label(self) -> str:
        return model_label(self.model_cfg, self.options.model)


def model_label(cfg: GPTConfig, spec: str) -> str:
    """``gpt2-small``, ``tiny``..., or a JSON config's file name without ``.json``."""
    return cfg.name or Path(spec).stem


def _check_and_load(
    options: FinetuneOptions, model_cfg: GPTConfig | None = None
) -> tuple[GPTConfig, torch.device, str, TrainingData]:
    """Everything that can fail on the user's input, before a run folder is touched."""
    cfg = validate_options(options, model_cfg)
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)
    data = load_training_data(Path(options.data_dir), cfg.context_length, options.max_length)
    return cfg, device, precision, data


def finetune(
    options: FinetuneOptions, out: str | Path | None = None, on_event: Callable[[Event], None] | None = None
) -> dict:
    """Train a classifier into a new run folder and return its summary.

    Options are checked and the data read before any folder is created, so a bad option
    leaves nothing behind. Raises ``TrainingInterrupted`` on Ctrl-C.
    """
    started = time.perf_counter()
    options = replace(options, data_dir=str(Path(options.data_dir).resolve()))
    cfg, device, precision, data = _check_and_load(options)
    root = Path(options.data_dir)
    run_dir = claim_run_dir(Path(out)) if out else new_run_dir(root, model_label(cfg, options.model), options.trainable)
    setup = _Setup(options, cfg, device, precision, data, run_dir, started)
    hparams = {
        **asdict(options),
        "resolved": {
            "model_config": cfg.to_dict(),
            "max_length": data.max_length,
            "device": str(device),
            "precision": precision,
            "labels": data.labels,
            "steps_per_epoch": setup.steps_per_epoch,
            "total_steps": setup.total_steps,
            "data_fingerprint": data.fingerprint,
            "spamtune_version": __version__,
        },
    }
    atomic_write_json(run_dir / HPARAMS_FILE, hparams)
    return _Training(setup, on_event).run()


# Options a resumed run may take afresh: where the data is (its fingerprint is checked) and
# where to compute.
RESUMABLE_CHANGES = ("device", "data_dir")


def resume_finetune(
    run_dir: str | Path, changed: dict | None = None, on_event: Callable[[Event], None] | None = None
) -> dict:
    """Continue an unfinished run from its last checkpoint; same final metrics as if never stopped.

    ``changed`` holds options given again on the command line: ``device`` and ``data_dir`` may
    differ, any other option must equal the run's own.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpamtuneError(f"no run folder {run_dir}")
    hparams = read_hparams(run_dir)
    if (run_dir / SUMMARY_FILE).is_file() and not (run_dir / RESUME_DIR).is_dir():
        raise SpamtuneError(f"{run_dir} is a finished run; nothing to resume")
    try:
        options = FinetuneOptions(**{f.name: hparams[f.name] for f in fields(FinetuneOptions)})
        resolved = hparams["resolved"]
        cfg = GPTConfig.from_dict(resolved["model_config"])
    except (KeyError, TypeError) as exc:
        raise SpamtuneError(f"{run_dir / HPARAMS_FILE} is not a spamtune run's hyperparameters ({exc})") from None
    for name, value in (changed or {}).items():
        if name in RESUMABLE_CHANGES:
            setattr(options, name, str(Path(value).resolve()) if name == "data_dir" else value)
        elif getattr(options, name) != value:
            flag = "--" + name.replace("_", "-")
            raise SpamtuneUsageError(
                f"--resume continues {run_dir} with the options it started with: {flag} {value} "
                f"differs from its {getattr(options, name)} (only --device and --data-dir may change)"
            )
    if options.max_length is None:
        options.max_length = resolved["max_length"]
    cfg, device, precision, data = _check_and_load(options, cfg)
    if data.fingerprint != resolved.get("data_fingerprint"):
        raise SpamtuneError(
            f"the prepared data in {options.data_dir} is not the data this run started with; "
            "resume needs the same splits"
        )
    return _Training(_Setup(options, cfg, device, precision, data, run_dir, started), on_event).run()


class _Training:
    def __init__(self, setup: _Setup, on_event: Callable[[Event], None] | None):
        self.s = setup
        self.emit = on_event or (lambda event: None)
        o = setup.options
        self.model = build_model(setup.model_cfg, o, len(setup.data.labels)).to(setup.device)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # The fused kernel updates all trainable tensors in one pass: on CPU it measured 3.4 ms
        # per step for the last block against 16 ms for the default, about 9 s of the recipe.
        fused = setup.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(trainable, lr=o.lr, weight_decay=o.weight_decay, fused=fused)
        self.scaler = torch.amp.GradScaler("cuda") if setup.precision == "fp16" else None
        self.classifier_cfg = ClassifierConfig(
            model=setup.model_cfg,
            labels=setup.data.labels,
            pooling=o.pooling,
            max_length=setup.data.max_length,
            trainable=o.trainable,
            base_model=setup.model_cfg.name,
            weights=o.weights,
        )
        self.pad_to = pad_width(o.pooling, setup.data.max_length)
        self.state = LoopState()
        self.checkpoint_step = 0
        # CPU copies of the trainable parameters at the best evaluation so far; the frozen
        # rest of the model never changes, so these and the model make up the best classifier.
        self.best_weights: dict[str, torch.Tensor] = {}
        self.checkpoint_best: tuple[int | None, dict[str, torch.Tensor]] = (None, {})  # as of the checkpoint
        self._elapsed_base = 0.0
        self.records: list[dict] = []

    # ---- time: carried across resumed sessions through the checkpoint
    def _elapsed(self) -> float:
        return self._elapsed_base + time.perf_counter() - self.s.started

    def run(self) -> dict:
        run_dir = self.s.run_dir
        if (run_dir / RESUME_DIR / RESUME_FILE).is_file():
            self._load_checkpoint()
            self._elapsed_base = self.state.elapsed_s
        else:
            self._save_checkpoint()  # an interrupted run is resumable from its first step
        # Evaluations after the checkpoint (written just before an interruption) are redone.
        self.records = [r for r in read_metrics(run_dir) if r["step"] <= self.state.step]
        trainable, total = count_parameters(self.model)
        d = self.s.data
        self.emit(TrainingStarted(
            run_dir, self.s.model_label, self.state.step, self.s.total_steps, str(self.s.device), self.s.precision,
            trainable, total, len(d.train), len(d.validation), len(d.test), d.max_length,
        ))  # fmt: skip
        try:
            self.cache_report = attach_prefix_caches(
                self.model, d, self.s.options, self.s.device, self.s.precision,
                on_building=lambda blocks: self.emit(PrefixCaching(blocks)),
            )  # fmt: skip
            self.emit(self.cache_report)
            self._train()
            return self._finish(trainable, total)
        except KeyboardInterrupt:
            # The best weights as of the last checkpoint become a usable classifier (a second
            # Ctrl-C during the write leaves no partial file and the resume state untouched).
            best_step, best_weights = self.checkpoint_best
            self._write_model(best_weights)
            raise TrainingInterrupted(run_dir, self.state.step, self.checkpoint_step, best_step) from None

    def _train(self) -> None:
        o, st = self.s.options, self.state
        session_examples, session_time = st.examples_seen, st.training_time_s
        self.model.train()
        while st.epoch < o.epochs and not st.stopped_early:
            batches = epoch_batches(self.s.data.train.lengths, o.batch_size, o.seed, st.epoch)
            groups = [batches[i : i + o.grad_accum] for i in range(0, len(batches), o.grad_accum)]
            for group in groups[st.steps_in_epoch :]:
                tick = time.perf_counter()
                batch_list = [self.s.data.train.batch(idx, self.s.device, self.pad_to) for idx in group]
                try:
                    loss = optimizer_step(
                        self.model, self.optimizer, batch_list, o.pooling,
                        precision=self.s.precision, scaler=self.scaler, last_query_only=o.shortcuts,
                    )  # fmt: skip
                except NonFiniteLoss as exc:
                    raise self._diverged(f"{exc} at step {st.step + 1} (epoch {st.epoch + 1})") from None
                st.training_time_s += time.perf_counter() - tick
                st.step += 1
                st.steps_in_epoch += 1
                st.examples_seen += sum(len(b) for b in batch_list)
                rate = (st.examples_seen - session_examples) / max(st.training_time_s - session_time, 1e-9)
                self.emit(StepDone(st.step, self.s.total_steps, st.epoch + 1, loss, st.examples_seen, rate))
                if o.eval_every and st.step % o.eval_every == 0 and st.steps_in_epoch < len(groups):
                    self._evaluate_and_checkpoint()
                    if st.stopped_early:
                        return
            st.epoch += 1
            st.steps_in_epoch = 0
            self._evaluate_and_checkpoint()

    def _diverged(self, what: str) -> SpamtuneError:
        self._write_model(self.checkpoint_best[1])
        hint = "try a lower --lr" + (" or --precision fp32" if self.s.precision != "fp32" else "")
        return SpamtuneError(
            f"{what}; training stopped, the last checkpoint (step {self.checkpoint_step}) is in {self.s.run_dir}; {hint}"
        )

    def _evaluate(self, model: GPTModel, examples: Examples) -> tuple[float, float]:
        s = self.s
        return evaluate_examples(
            model, examples, s.options.pooling,
            device=s.device, precision=s.precision, pad_to=self.pad_to, last_query_only=s.options.shortcuts,
        )  # fmt: skip

    def _evaluate_and_checkpoint(self) -> None:
        st, s = self.state, self.s
        self.emit(EvaluationStarted(st.step, "train+validation"))
        train_loss, train_acc = self._evaluate(self.model, s.data.train)
        val_loss, val_acc = self._evaluate(self.model, s.data.validation)
        for loss in (train_loss, val_loss):
            if not math.isfinite(loss):
                raise self._diverged(f"the evaluation loss became {loss} at step {st.step}")
        epoch = round(st.epoch + st.steps_in_epoch / s.steps_per_epoch, 4)
        is_best = st.is_better(val_loss, val_acc)
        if is_best:
            self.best_weights = {
                n: p.detach().to("cpu", copy=True) for n, p in self.model.named_parameters() if p.requires_grad
            }
            st.best_val_loss, st.best_val_acc, st.best_step, st.best_epoch = val_loss, val_acc, st.step, epoch
            st.evals_since_best = 0
        else:
            st.evals_since_best += 1
            st.stopped_early = bool(s.options.patience and st.evals_since_best >= s.options.patience)
        record = {
            "step": st.step,
            "epoch": epoch,
            "examples_seen": st.examples_seen,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "elapsed_s": round(self._elapsed(), 3),
        }
        self.records.append(record)
        atomic_write_text(s.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in self.records))
        self._save_checkpoint()
        self.emit(Evaluated(record, is_best))

    # ---- resume state: one safetensors file, so weights, optimizer and position always agree
    def _save_checkpoint(self) -> None:
        st = self.state
        st.elapsed_s = self._elapsed()
        tensors = {f"model.{n}": p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
        tensors.update({f"best.{n}": t for n, t in self.best_weights.items()})
        for index, param_state in self.optimizer.state_dict()["state"].items():
            for key, value in param_state.items():
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        if self.s.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.s.device)
        metadata = {"loop": json.dumps(asdict(st)), "scaler": json.dumps(self.scaler.state_dict() if self.scaler else {})}
        with atomic_path(self.s.run_dir / RESUME_DIR / RESUME_FILE) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        self.checkpoint_step = st.step
        self.checkpoint_best = (st.best_step, self.best_weights)

    def _load_checkpoint(self) -> None:
        path = self.s.run_dir / RESUME_DIR / RESUME_FILE
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata()
            loop = json.loads(metadata["loop"])
            scaler_state = json.loads(metadata["scaler"])
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
            raise SpamtuneError(f"cannot read the resume state {path}: {exc}") from None
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        saved = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        self.best_weights = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
        frozen = {k: v for k, v in self.model.state_dict().items() if k not in trainable}
        check_state_shapes(self.model, {**frozen, **saved}, str(path))
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in trainable:
                    param.copy_(saved[name])
        optim_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                optim_state.setdefault(int(index), {})[name] = value
        optimizer_sd = self.optimizer.state_dict()
        optimizer_sd["state"] = optim_state
        self.optimizer.load_state_dict(optimizer_sd)
        if self.scaler and scaler_state:
            self.scaler.load_state_dict(scaler_state)
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and self.s.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.s.device)
        self.state = LoopState(**loop)
        self.checkpoint_step = self.state.step
        self.checkpoint_best = (self.state.best_step, self.best_weights)

    def _write_model(self, trainable_weights: dict[str, torch.Tensor]) -> None:
        """``model.safetensors``: the frozen weights with these trainable ones (nothing if there
        are none yet). Training is over when this is called, so the model itself takes them."""
        if not trainable_weights:
            return
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in trainable_weights:
                    param.copy_(trainable_weights[name])
        save_classifier(self.s.run_dir, self.model, self.classifier_cfg)

    def _finish(self, trainable: int, total: int) -> dict:
        s, st = self.s, self.state
        self._write_model(self.best_weights)
        self.emit(EvaluationStarted(st.step, "test"))
        test_loss, test_acc = self._evaluate(self.model, s.data.test)
        best = next(r for r in self.records if r["step"] == st.best_step)
        wall = self._elapsed()
        summary = {
            "run": str(s.run_dir),
            "model": s.model_label,
            "weights": s.options.weights,
            "trainable": s.options.trainable,
            "pooling": s.options.pooling,
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "validation_accuracy": best["val_acc"],
            "validation_loss": best["val_loss"],
            "train_accuracy": best["train_acc"],
            "train_loss": best["train_loss"],
            "best_step": best["step"],
            "best_epoch": best["epoch"],
            "steps": st.step,
            "stopped_early": st.stopped_early,
            "examples_seen": st.examples_seen,
            "wall_time_s": round(wall, 3),
            "training_time_s": round(st.training_time_s, 3),
            "examples_per_s": round(st.examples_seen / max(st.training_time_s, 1e-9), 2),
            "trainable_params": trainable,
            "total_params": total,
            "device": str(s.device),
            # CPU kernels split sums across threads, so bit-identical reruns need the same count.
            "cpu_threads": torch.get_num_threads(),
            "precision": s.precision,
            "shortcuts": s.options.shortcuts,
            "prefix_cache": {
                "blocks": self.cache_report.start_block,
                "splits": list(self.cache_report.splits),
                "bytes": self.cache_report.nbytes,
                "build_s": round(self.cache_report.seconds, 3),
            },
            "max_length": s.data.max_length,
            "n_train": len(s.data.train),
            "n_validation": len(s.data.validation),
            "n_test": len(s.data.test),
        }
        plot_curves(self.records, len(s.data.train), s.run_dir / CURVES_FILE)
        atomic_write_json(s.run_dir / SUMMARY_FILE, summary)
        shutil.rmtree(s.run_dir / RESUME_DIR, ignore_errors=True)
        return summary
