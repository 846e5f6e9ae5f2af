"""Fine-tuning: the book's chapter-6 training loop, made reproducible, resumable and visible.

The recipe is the book's: build GPT-2, load its weights (or initialise it at random under the
seed), swap the head and freeze what the preset leaves frozen (``convert_to_classifier``),
then AdamW over the trainable parameters with cross-entropy on the pooled position. What is
added makes the result trustworthy:

* dynamic, length-bucketed batches whose order is rebuilt from (seed, epoch), so any epoch can
  be replayed exactly after a restart (``examples.epoch_batches``);
* loss and accuracy on the FULL train and validation splits at every evaluation (the book
  estimates them from 5 batches), one JSON line each in ``metrics.jsonl``;
* the best-on-validation weights kept as ``model.safetensors`` (what ``predict`` loads), and a
  resume state (``spamtune.resume``) while the run is unfinished. The full model (mostly frozen
  weights that never change) is written once, when the run ends or is interrupted, not at every
  new best: 0.5 GB for gpt2-small, 6 GB for xl.

``finetune`` and ``resume_finetune`` check everything and prepare a run folder; ``train_run`` is
the loop. This module never prints: it reports through ``on_event`` and returns values.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from spamtune import __version__, paths, runs
from spamtune.adamw import AdamW
from spamtune.checkpoint import ClassifierConfig, save_classifier
from spamtune.device import Precision, resolve_device
from spamtune.distributed import (
    DataParallelClassifier,
    PeerLost,
    World,
    build_prefix_cache_sharded,
    evaluate_sharded,
    loss_weights,
    predict_logits_sharded,
    run_lock,
)
from spamtune.errors import DiskFull, OptionError, SpamtuneError
from spamtune.fsutil import WriteBehind
from spamtune.interrupts import interrupts_deferred
from spamtune.events import (
    EvaluationStarted,
    Evaluated,
    Event,
    PrefixCaching,
    StepDone,
    TrainingInterrupted,
    TrainingStarted,
    TrainingStopped,
)
from spamtune.examples import Batch, TrainingData, epoch_batches, load_training_data, pad_width, prepared_data
from spamtune.calibration import calibrate_and_store
from spamtune.forward import calc_loss_batch, class_weight_tensor, evaluate_examples
from spamtune.model import GPTConfig, GPTModel, Trainable, convert_to_classifier, count_parameters, is_integer, is_real
from spamtune.options import (
    ADDED_OPTIONS, FOLDED_POOLINGS, LORA_OPTIONS, RESUMABLE_CHANGES, FinetuneOptions, as_typed, blamed_on_record, options_in_record,
    recorded_model, validate_options,
)  # fmt: skip
from spamtune.plots import plot_curves
from spamtune.base_model import build_base, prepare_base
from spamtune.bases import BaseRef
from spamtune.cache_store import PrefixCacheStore
from spamtune.compact import check_same_base, save_compact_run, write_base_ref
from spamtune.idle_work import split_threads
from spamtune.threads import CoreWatch, spins_long
from spamtune.lora import convert_to_lora_classifier, merge_lora
from spamtune.prefix_cache import (
    PrefixCacheReport,
    attach_prefix_caches,
    test_split_apart,
    cancel_prefix_caches,
    computing_behind,
    finish_prefix_caches,
    memory_budget_bytes,
)
from spamtune.schedule import clip_gradients, make_scheduler
from spamtune.resume import load_resume_state, resume_writer, saved_settings, saved_step, trainable_weights, training_state
from spamtune.fsdp import is_sharded, plain_copy, set_from_rank0, shard_classifier, whole_model

# --------------------------------------------------------------------------- model and step


def build_model(cfg: GPTConfig, options: FinetuneOptions, trainable: Trainable, num_classes: int, base: GPTModel | None = None) -> GPTModel:
    """The book's order: GPT-2, its weights (or a seeded random init), then the classifier
    surgery; for ``lora``, LoRA on the last ``lora_blocks`` blocks over a frozen model."""
    model = base if base is not None else build_base(cfg, options)
    if trainable.preset == "lora":
        return convert_to_lora_classifier(
            model, num_classes, rank=options.lora_rank, alpha=options.lora_alpha, blocks=options.lora_blocks, seed=options.seed
        )
    return convert_to_classifier(model, num_classes, trainable, options.seed)


def make_optimizer(model: GPTModel, options: FinetuneOptions, device: torch.device, sharded: bool = False):
    """AdamW over the trainable parameters. The fused kernel updates them all in one pass: on
    CPU it measured 3.4 ms per step for the last block against 16 ms for the default. On the
    CPU and CUDA it is called without ``torch.optim`` (``spamtune.adamw``), whose import of
    PyTorch's compiler cost a second of start-up here and 2.5 s on a GPU machine."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if device.type in ("cpu", "cuda") and not sharded:
        return AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
    fused = device.type in ("cpu", "cuda")  # FSDP's sharded parameters
    return torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay, fused=fused)


class NonFiniteLoss(SpamtuneError):
    """A loss became NaN or infinite (``what``: "training" or "evaluation")."""

    def __init__(self, value: float, what: str = "training"):
        super().__init__(f"the {what} loss became {value}")
        self.value, self.what = value, what


def optimizer_step(
    model: GPTModel,
    optimizer: AdamW | torch.optim.Optimizer,
    batches: list[Batch],
    pooling: str,
    precision: Precision,
    last_query_only: bool = True,
    class_weights: torch.Tensor | None = None,
    *,
    weights: list[float] | None = None,
    world: World = World(),
    clip_grad_norm: float | None = None,
) -> float:
    """One AdamW update from one or more batches (gradient accumulation); returns the loss.

    Each batch's loss is weighted by its share of the examples, so accumulating k batches
    gives exactly the gradient of one batch k times as large. Under several ranks, ``model``
    is a ``DataParallelClassifier``, ``batches`` this rank's shares and ``weights`` their
    factors (``distributed.loss_weights``); gradients are averaged over the ranks once, in the
    last batch's backward, and the loss returned is the global one. A NaN or infinite loss raises
    ``NonFiniteLoss`` before the weights are touched. Gradients are complete (and, for fp16,
    still scaled) just before ``scaler.step``: the place for unscaling and clipping them.
    """
    optimizer.zero_grad(set_to_none=True)
    if weights is None:
        n = sum(len(b) for b in batches)
        weights = [len(b) / n for b in batches]
    total = torch.zeros((), device=precision.device)
    for i, (batch, weight) in enumerate(zip(batches, weights)):
        accumulate = i < len(batches) - 1 and hasattr(model, "no_sync")
        with model.no_sync() if accumulate else contextlib.nullcontext():
            with precision.forward_context():
                loss = calc_loss_batch(model, batch, pooling, last_query_only, class_weights) * weight
            precision.scaler.scale(loss).backward()
        total += loss.detach()
    value = world.sum([total.item()])[0] / world.size
    if not math.isfinite(value):
        raise NonFiniteLoss(value)
    if clip_grad_norm is not None:
        precision.scaler.unscale_(optimizer)  # clip the true gradients, not fp16's scaled ones
        clip_gradients((p for group in optimizer.param_groups for p in group["params"]), clip_grad_norm)
    precision.scaler.step(optimizer)
    precision.scaler.update()
    return value


# --------------------------------------------------------------------------- a run, set up


@dataclass
class Run:
    """Everything a run needs, checked and read before the loop starts."""

    options: FinetuneOptions
    model_cfg: GPTConfig
    trainable: Trainable
    precision: Precision
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


def check_and_load(options: FinetuneOptions, model_cfg: GPTConfig | None = None):
    """Everything that can fail on the user's input, before a run folder is touched:
    ``(model config, trainable, precision, data)``."""
    cfg, trainable = validate_options(options, model_cfg)
    precision = Precision.resolve(options.precision, resolve_device(options.device))
    check_strategy(options.strategy, precision, World.current())
    data = load_training_data(Path(options.data_dir), cfg.context_length, options.max_length)
    return cfg, trainable, precision, data


def check_before_launch(options: FinetuneOptions, ranks: int) -> None:
    """The option checks each of ``ranks`` processes would make, made once before they are started,
    so that a refusal is one line rather than one per rank: all of ``validate_options``, and
    FSDP's limits where they are known without a GPU's properties (reading those here would
    start CUDA in the launcher, holding memory on the first rank's GPU while the ranks train),
    that the device asked for is there, and that the data root holds prepared splits."""
    validate_options(options)
    device = resolve_device(options.device)  # whether CUDA is there at all starts none of it
    prepared_data(Path(options.data_dir))  # the files only: reading them is each rank's work
    if options.strategy != "fsdp":
        return
    if device.type == "cuda" and options.precision in ("auto", "bf16"):
        return  # what they resolve to depends on the GPU: each rank checks
    check_strategy(options.strategy, Precision.resolve(options.precision, device), World(0, ranks))


def check_strategy(strategy: str, precision: Precision, world: World) -> None:
    """FSDP's limits, where it runs (several ranks; one process trains plainly with any strategy)."""
    if strategy != "fsdp" or not world.distributed:
        return
    if precision.device.type not in ("cpu", "cuda"):
        raise OptionError("strategy", f"{{option}} fsdp runs on CUDA GPUs or CPUs, not {precision.device.type}")
    if precision.name == "fp16":
        # fp16's gradient scaler decides to skip a step from the gradients it sees: under FSDP
        # each rank sees only its shard, so ranks could disagree.
        raise OptionError("strategy", "{option} fsdp trains in fp32 or bf16, not fp16; pass --precision fp32 (or bf16 where the device has it)")


def finetune(
    options: FinetuneOptions, out: str | Path | None = None, on_event: Callable[[Event], None] | None = None
) -> dict:
    """Train a classifier into a new run folder and return its summary.

    Options are checked and the data read before any folder is created, so a bad option
    leaves nothing behind. Raises ``TrainingInterrupted`` on Ctrl-C.
    """
    started = time.perf_counter()
    options = replace(options, data_dir=str(Path(options.data_dir).resolve()), model=recorded_model(options.model))
    cfg, trainable, precision, data = check_and_load(options)
    runs.check_utf8_path(Path(options.data_dir), "the data root")  # hparams.json records it
    world = World.current()  # several ranks: rank 0 creates and writes the folder, all train
    if out:
        run_dir = world.on_main(lambda: runs.claim_run_dir(Path(out)))
    else:
        name = f"{model_label(cfg, options.model)}-{options.trainable}"
        run_dir = world.on_main(lambda: runs.new_run_dir(paths.runs_dir(Path(options.data_dir)), name))
    run = Run(options, cfg, trainable, precision, data, run_dir, started)
    with run_lock(world, run_dir), _nothing_kept_if_stopped_before_training(world, run_dir):
        world.on_main(lambda: runs.write_hparams(run_dir, {
            **asdict(options),
            "resolved": {
                **resolved_settings(run),
                "device": str(precision.device),
                "precision": precision.name,
                "steps_per_epoch": run.steps_per_epoch,
                "world_size": world.size,
                "spamtune_version": __version__,
            },
        }), share=False)  # fmt: skip
        return train_run(run, on_event)


@contextlib.contextmanager
def _nothing_kept_if_stopped_before_training(world: World, run_dir: Path) -> Iterator[None]:
    """Ctrl-C before the first checkpoint (while the base is drawn or the model built) leaves
    nothing to resume: the run folder this process made goes, rather than stay as a run that
    ``spamtune runs`` can only call failed. Once a checkpoint is written, ``train_run`` turns
    Ctrl-C into ``TrainingInterrupted`` and the run stays, resumable. A Ctrl-C while the first
    checkpoint is being taken comes as ``TrainingInterrupted`` with no checkpoint written: it is
    a stop before training too, so that nothing points at a resume state that is not there."""
    try:
        yield
    except (KeyboardInterrupt, TrainingInterrupted) as stop:
        # A finished run has no resume state either (a Ctrl-C just after it was written): kept.
        finished = (run_dir / runs.SUMMARY_FILE).is_file()
        if world.is_main and not runs.resume_file(run_dir).is_file() and not finished:
            runs.remove_unstarted(run_dir)
            if isinstance(stop, TrainingInterrupted):
                raise KeyboardInterrupt from None
        raise


class OptionChanged(OptionError):
    """``resume_finetune`` was given an option the run cannot change."""

    def __init__(self, option: str, value, run_value, run_dir: Path):
        super().__init__(
            option,
            f"a resumed run keeps the options it started with: {{option}} {as_typed(value)} differs from its "
            f"{as_typed(run_value)} in {run_dir} (only the device, the data folder and the strategy may change)",
        )


def check_resumable(run_dir: Path) -> None:
    """What ``resume_finetune`` refuses first, checked before ``--devices`` starts ranks that
    would each refuse it (the ranks check again, holding the run's lock)."""
    if not run_dir.is_dir():
        raise SpamtuneError(f"no run folder {run_dir}")
    if runs.is_finished(run_dir):
        raise _nothing_to_resume(run_dir)


def _nothing_to_resume(run_dir: Path) -> SpamtuneError:
    return SpamtuneError(f"{run_dir} is a finished run; nothing to resume")


def resume_finetune(
    run_dir: str | Path, changed: dict | None = None, on_event: Callable[[Event], None] | None = None
) -> dict:
    """Continue an unfinished run from its last checkpoint; same final metrics as if never stopped.

    ``changed`` holds options given again: ``device`` and ``data_dir`` may differ, any other
    option must equal the run's own. Raises ``RunInUse`` while another process trains the run.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpamtuneError(f"no run folder {run_dir}")
    if not (run_dir / runs.HPARAMS_FILE).is_file():
        # Not a run (a folder of other things, a typo for another run): refused before the lock,
        # whose file would be left in that folder.
        runs.read_hparams(run_dir)
    world = World.current()
    with run_lock(world, run_dir):
        hparams = runs.read_hparams(run_dir)
        if runs.is_finished(run_dir):
            runs.release_finished(run_dir)
            raise _nothing_to_resume(run_dir)
        try:
            saved = options_in_record(hparams, run_dir / runs.HPARAMS_FILE, [f.name for f in fields(FinetuneOptions)])
            options = FinetuneOptions(**{
                f.name: saved.get(f.name, ADDED_OPTIONS[f.name]) if f.name in ADDED_OPTIONS else saved[f.name]
                for f in fields(FinetuneOptions)
            })  # fmt: skip
            resolved = resolved_for_resume(hparams, run_dir / runs.HPARAMS_FILE)
        except (KeyError, TypeError) as exc:
            raise SpamtuneError(f"{run_dir / runs.HPARAMS_FILE} is not a spamtune run's hyperparameters ({exc})") from None
        try:
            cfg = GPTConfig.from_dict(resolved["model_config"])
        except SpamtuneError as exc:
            raise SpamtuneError(f"{run_dir / runs.HPARAMS_FILE}: {exc}") from None
        for name, value in (changed or {}).items():
            if name in LORA_OPTIONS and options.trainable != "lora":
                raise OptionError(name, f"{{option}} applies only with --trainable lora, and {run_dir} trains {options.trainable}")
            if name in RESUMABLE_CHANGES:
                setattr(options, name, str(Path(value).resolve()) if name == "data_dir" else value)
            elif name == "model" and recorded_model(value) == recorded_model(options.model):
                continue  # the run's config file, given by another path (relative, where the run recorded it absolute)
            elif getattr(options, name) != value:
                raise OptionChanged(name, value, getattr(options, name), run_dir)
        state = runs.resume_file(run_dir)
        start_over = f"start over in a new run with its settings: spamtune finetune --config {run_dir} --data-dir {options.data_dir}"
        if not state.is_file() and runs.has_trained(run_dir):
            # Training would start again at step 0 and write over the run's metrics and weights.
            gone = "is not a file" if os.path.lexists(state) else "is missing"
            raise SpamtuneError(
                f"cannot resume {run_dir}: its resume state {state} {gone}, so the run "
                f"cannot go on from where it stopped; {start_over}"
            )
        if options.max_length is None:
            options.max_length = resolved["max_length"]
        from_file = {f.name for f in fields(FinetuneOptions)} - set(changed or {})  # the rest: given again as flags
        with blamed_on_record(run_dir / runs.HPARAMS_FILE, from_file):
            cfg, trainable, precision, data = check_and_load(options, cfg)  # a value that cannot work: said first
        check_settings_unchanged(run_dir, run_settings(asdict(options), resolved))
        if data.fingerprint != resolved["data_fingerprint"]:
            raise SpamtuneError(
                f"the prepared data in {options.data_dir} is not the data this run started with; "
                "resume needs the same splits"
            )
        run = Run(options, cfg, trainable, precision, data, run_dir, started)
        check_metrics_kept(run, start_over)
        world.on_main(lambda: (runs.remove_leftovers(run_dir), runs.clear_failure(run_dir)), share=False)
        return train_run(run, on_event)


def check_metrics_kept(run: Run, start_over: str) -> None:
    """Refuse to resume a run whose ``metrics.jsonl`` lacks an evaluation its resume state has
    passed: training carries on from the file, so a deleted or cut file left the finished run's
    metrics, curves and plot without its early epochs, and nothing said so. A link or anything
    else not a regular file there is refused too: it is read through, then replaced by a file at
    the next evaluation, so whatever it led to stops being the run's metrics."""
    path = run.run_dir / runs.METRICS_FILE
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        what = "is a symbolic link" if stat.S_ISLNK(mode) else "is not a file"
        raise SpamtuneError(
            f"cannot resume {run.run_dir}: its metrics {path} {what}; a run keeps them in a file of its own there: "
            f"put the file itself back, or {start_over}"
        )
    step = saved_step(run.run_dir)  # None: the resume state is damaged, which loading it reports
    if mode is not None:
        _check_records_complete(run, [r for r in runs.read_metrics(run.run_dir) if r["step"] <= (step or 0)], start_over)
    expected = evaluation_steps(run.steps_per_epoch, run.options.eval_every, step or 0)
    if not expected:
        return
    up_to = f"up to step {step}, where its resume state stands"
    evaluations = f"the {len(expected):,} evaluations" if len(expected) > 1 else "the one evaluation"
    if mode is None:
        what = f"is missing, and with it {evaluations} {up_to}"
    else:
        kept = {record["step"] for record in runs.read_metrics(run.run_dir)}  # a damaged line: one error naming it
        missing = [at for at in expected if at not in kept]
        if not missing:
            return
        shown = ", ".join(map(str, missing[:3])) + (f" and {len(missing) - 3:,} more" if len(missing) > 3 else "")
        lacking = f"{len(missing):,} of {evaluations}" if len(expected) > 1 else evaluations
        what = f"lacks {lacking} {up_to} (step {shown})"
    raise SpamtuneError(
        f"cannot resume {run.run_dir}: its metrics {path} {what}; the finished run's metrics and curves would be "
        f"incomplete: put the file back, or {start_over}"
    )


def _check_records_complete(run: Run, records: list[dict], start_over: str) -> None:
    """Refuse kept evaluation records that lack a figure the run's curves are drawn from (a
    line edited by hand): the resumed run trained to its end, then stopped drawing them with an
    unexpected KeyError, and a resume again stopped there again."""
    for record in records:
        lacking = [name for name in ("examples_seen", *runs.EVALUATION_FIGURES) if not is_real(record.get(name))]
        if lacking:
            raise SpamtuneError(
                f"cannot resume {run.run_dir}: its metrics {run.run_dir / runs.METRICS_FILE} hold a record of step "
                f"{record['step']} with no number for {', '.join(lacking)}; the finished run's curves could not be "
                f"drawn: fix that line, or {start_over}"
            )


def evaluates_after(step: int, steps_per_epoch: int, eval_every: int | None) -> bool:
    """Whether training evaluates after ``step`` (counted from 1): at the end of every epoch (an
    epoch is ``steps_per_epoch`` steps), and every ``eval_every`` steps."""
    return step % steps_per_epoch == 0 or bool(eval_every and step % eval_every == 0)


def evaluation_steps(steps_per_epoch: int, eval_every: int | None, until: int) -> list[int]:
    """The steps up to ``until`` after which training evaluates."""
    return [step for step in range(1, until + 1) if evaluates_after(step, steps_per_epoch, eval_every)]


# What resume reads of a run's ``resolved`` section, each with the test its value must pass and
# what that test asks for, as the error says it. Training has always written all three.
_RESOLVED_FOR_RESUME = (
    ("model_config", lambda v: isinstance(v, dict), "an object"),
    ("max_length", lambda v: is_integer(v) and v >= 1, "a whole number of at least 1"),
    ("data_fingerprint", lambda v: isinstance(v, str), "a string"),
)


def resolved_settings(run: Run) -> dict:
    """What a run's options resolved to that its training depends on (``hparams.json``'s
    ``resolved``, with the device and bookkeeping beside them)."""
    data = run.data
    return {
        "model_config": run.model_cfg.to_dict(), "max_length": data.max_length, "labels": data.labels,
        "total_steps": run.total_steps, "data_fingerprint": data.fingerprint,
    }  # fmt: skip


_RESOLVED_SETTINGS = ("model_config", "max_length", "labels", "total_steps", "data_fingerprint")  # resolved_settings' fields


def run_settings(options: dict, resolved: dict) -> dict:
    """What a run trains with, as each of its checkpoints keeps it (``resume_writer``): every
    option a resume may not change (``max_length`` by what it resolved to) and what they
    resolved to. Compared on resume with the run's ``hparams.json``, so that a hand edit of it
    after the run stopped (a batch size, the labels) is refused rather than trained with."""
    kept = {name: value for name, value in options.items() if name not in RESUMABLE_CHANGES and name != "max_length"}
    kept.update({f"resolved.{name}": resolved.get(name) for name in _RESOLVED_SETTINGS})
    return json.loads(json.dumps(kept))  # as a checkpoint keeps it: JSON's lists and numbers


def check_settings_unchanged(run_dir: Path, now: dict) -> None:
    """Refuse to resume a run whose ``hparams.json`` no longer says what its last checkpoint
    was taken with (older checkpoints keep no settings: nothing to compare)."""
    kept = saved_settings(run_dir)
    changed = [name for name in kept or {} if name in now and now[name] != kept[name]]
    if changed:
        name = changed[0]
        raise SpamtuneError(
            f'{run_dir / runs.HPARAMS_FILE}: "{name}" is {json.dumps(now[name])} but the run was checkpointed with '
            f"{json.dumps(kept[name])}; a resume continues the run with its own settings: put it back, "
            f"or start a new run with them (spamtune finetune --config {run_dir})"
        )


def resolved_for_resume(hparams: dict, source: Path) -> dict:
    """The ``resolved`` section of a run's ``hparams.json``, the fields resume reads checked: a
    hand-edited ``"max_length": "abc"`` is one error naming the file and the field, not a
    TypeError from deep in the data loading."""
    if "resolved" not in hparams:
        raise SpamtuneError(f'{source} lacks "resolved"')
    resolved = hparams["resolved"]
    if not isinstance(resolved, dict):
        raise SpamtuneError(f'{source}: "resolved" must be an object, not {json.dumps(resolved)}')
    for name, ok, wanted in _RESOLVED_FOR_RESUME:
        if name not in resolved:
            raise SpamtuneError(f'{source}: "resolved" lacks "{name}"')
        if not ok(resolved[name]):
            raise SpamtuneError(f'{source}: "resolved.{name}" must be {wanted}, not {json.dumps(resolved[name])}')
    return resolved


# --------------------------------------------------------------------------- the loop


def threads_for_steps(data: TrainingData, threads: int, cores_for_others: int = 0) -> int:
    """The threads a training step uses: all of them, less the cores other processes want
    (``cores_for_others``, from ``threads.CoreWatch``; at least one); and at most the steps'
    share of ``split_threads`` while a split's states are computed behind the steps, so that
    that work's workers have cores of their own (on two cores: one thread each).

    On two cores the steps at full width left the idle-priority thread little: the book's recipe
    in fp32 still waited 4.6 s for the test split's states after its steps (10.8-12.0 s). With
    one core each the steps took 14.4 s and the states were ready before them, ~2.3 s less in
    all. Only for steps whose numbers do not depend on the thread count
    (``steps_agree_across_threads``), so that a first run's figures are a second run's.
    """
    steps = max(1, threads - cores_for_others)
    return min(steps, split_threads(threads)[0]) if computing_behind(data) else steps


def steps_agree_across_threads(run: Run) -> bool:
    """Whether a training step gives the same numbers on any thread count: one that trains the
    final block at the pooled position alone, with the head (``TransformerBlock.forward_at``,
    ``spamtune.row_norm``; tested at gpt2-small's width). Full-sequence blocks, mean pooling,
    LoRA's layers and a head on its own go through PyTorch's kernels, whose rounding changes
    with the threads."""
    options = run.options
    folded = options.shortcuts and options.pooling in FOLDED_POOLINGS
    return folded and run.trainable.preset != "lora" and run.trainable.first_block == run.model_cfg.n_layers - 1


def is_better(record: dict, best: dict | None) -> bool:
    """Lowest validation loss wins; on a tie, the higher accuracy."""
    if best is None:
        return True
    loss, best_loss = record["validation_loss"], best["validation_loss"]
    return loss < best_loss or (loss == best_loss and record["validation_accuracy"] > best["validation_accuracy"])


def train_run(run: Run, on_event: Callable[[Event], None] | None = None) -> dict:
    """Train from the run folder's resume state (or from the start) to the end; return the summary.

    Every evaluation appends to ``metrics.jsonl`` and rewrites the resume state. Ctrl-C writes
    the best weights as of the last checkpoint as ``model.safetensors`` and raises
    ``TrainingInterrupted``; a full disk raises ``TrainingStopped`` with the checkpoint intact.
    """
    world = World.current()  # under torchrun: every rank runs this loop on its share of each batch
    threads = torch.get_num_threads()
    share_cores = threads > 1 and steps_agree_across_threads(run)
    # A process that spins its threads long must hand cores over to others that want them.
    watch = CoreWatch() if share_cores and spins_long() else None
    emit = (on_event if world.is_main else None) or (lambda event: None)
    options, data, precision, run_dir = run.options, run.data, run.precision, run.run_dir
    # The base's identity keys the kept prefix caches and a compact run's reference; it is taken
    # before the surgery and before a resumed run's weights are loaded.
    base, base_sha256, base_ref = prepare_base(run.model_cfg, options)
    if base_ref is not None and runs.resume_file(run_dir).is_file():
        check_same_base(run_dir, base_ref)
    if base_ref is not None:  # from now on the run uses the base: `bases rm --unused` must see it
        world.on_main(lambda: write_base_ref(run_dir, base_ref, options.data_dir, lora_settings(run)), share=False)
    model = build_model(run.model_cfg, options, run.trainable, len(data.labels), base).to(precision.device)
    params = count_parameters(model)  # as trained: write_model merges LoRA away at the end
    sharded = world.distributed and options.strategy == "fsdp"
    if sharded:  # before the optimizer, which then holds (and updates) this rank's shards
        shard_classifier(model, precision.device)
    optimizer = make_optimizer(model, options, precision.device, sharded)
    pad_to = pad_width(options.pooling, data.max_length)
    class_weights = class_weight_tensor(options.class_weights, data.train.labels, len(data.labels))
    if class_weights is not None:
        class_weights = class_weights.to(precision.device)

    # Where training stands: at the start, or as the last checkpoint left it (rank 0's view,
    # since it writes the first checkpoint while a slower rank may still be looking).
    resuming = world.decide_once(runs.resume_file(run_dir).is_file())
    at, best_weights = load_resume_state(run_dir, model, optimizer, precision) if resuming else ({}, {})
    # The best weights so far live on rank 0 alone (it writes them); the others get them at the end.
    best_weights = best_weights if world.is_main else {}
    # FSDP's model is its own step model: its classify gathers, and backward reduce-scatters.
    step_model = DataParallelClassifier(model, precision.device) if world.distributed and not sharded else model
    step, epoch, steps_in_epoch = at.get("step", 0), at.get("epoch", 0), at.get("steps_in_epoch", 0)
    examples_seen, training_time = at.get("examples_seen", 0), at.get("training_time_s", 0.0)
    best, evals_since_best, stopped_early = at.get("best"), at.get("evals_since_best", 0), at.get("stopped_early", False)
    best = best and runs.normalize_metrics_record(best)  # a checkpoint written under the old names
    elapsed_before = at.get("elapsed_s", 0.0)  # wall time of the sessions before this one
    records = [r for r in runs.read_metrics(run_dir) if r["step"] <= step]  # later ones are redone
    scheduler = make_scheduler(optimizer, options.schedule, options.warmup_steps, run.total_steps, start_step=step)

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - run.started

    # What an interruption falls back to: (step, best step, best weights) of the last resume
    # state written. One process writes it behind the next steps; several ranks write it
    # before going on, so that a failed write stops every rank at once.
    writer = WriteBehind(written=(step, best and best["step"], best_weights))
    settings = run_settings(asdict(options), resolved_settings(run))

    def checkpoint() -> None:
        """Write the resume state (by ``writer``, or before returning under several ranks)."""
        position = {
            "step": step, "epoch": epoch, "steps_in_epoch": steps_in_epoch, "examples_seen": examples_seen,
            "best": best, "evals_since_best": evals_since_best, "stopped_early": stopped_early,
            "elapsed_s": elapsed(), "training_time_s": training_time,
        }  # fmt: skip
        with world.collective():  # under FSDP, gathered by every rank
            state = training_state(model, optimizer, keep=world.is_main)
        write = resume_writer(run_dir, state, precision, best_weights, position, settings)
        label = (step, best and best["step"], best_weights)
        if not world.distributed:
            writer.submit(write, label)
            return
        world.on_main(write, share=False)
        writer.written = label

    forward = {"precision": precision, "pad_to": pad_to, "last_query_only": options.shortcuts}
    cfg = classifier_config(run)
    positive = cfg.labels[cfg.positive_label]  # accuracy decides as predict and evaluate do

    def evaluate(examples) -> tuple[float, float]:
        """Several ranks: each evaluates a share of the split, the sums are added over all of them."""
        score = functools.partial(evaluate_sharded, world) if world.distributed else evaluate_examples
        with world.collective(), whole_model(model):
            return score(model, examples, options.pooling, positive, **forward)

    try:
        if not resuming:
            checkpoint()  # an interrupted run is resumable from its first step
        cache = start_session(run, model, step, emit, world, base_sha256)
        model.train()
        session_examples, session_time = examples_seen, training_time
        step_threads: set[int] = set()  # the thread counts the steps of this session ran on
        while epoch < options.epochs and not stopped_early:
            batches = epoch_batches(data.train.lengths, options.batch_size, options.seed, epoch)
            groups = [batches[i : i + options.grad_accum] for i in range(0, len(batches), options.grad_accum)]
            for group in groups[steps_in_epoch:]:
                tick = time.perf_counter()
                cores_for_others = watch.poll() if watch is not None else 0
                if share_cores and (wanted := threads_for_steps(data, threads, cores_for_others)) != torch.get_num_threads():
                    torch.set_num_threads(wanted)
                step_threads.add(torch.get_num_threads())
                # This rank's share of each batch; a rank left without one (a last batch smaller
                # than the number of ranks) still runs a batch, weighted 0, so DDP's collectives match.
                shares = [world.share(idx) for idx in group]
                batch_list = [data.train.batch(share or idx[:1], precision.device, pad_to) for share, idx in zip(shares, group)]
                weights = loss_weights(world, [len(s) for s in shares], [len(idx) for idx in group])
                with world.collective():
                    loss = optimizer_step(
                        step_model, optimizer, batch_list, options.pooling, precision, options.shortcuts, class_weights,
                        weights=weights, world=world, clip_grad_norm=options.clip_grad_norm,
                    )  # fmt: skip
                lr = optimizer.param_groups[0]["lr"]  # the rate this step took; the schedule now sets the next
                scheduler.step()
                training_time += time.perf_counter() - tick
                step, steps_in_epoch = step + 1, steps_in_epoch + 1
                examples_seen += sum(len(idx) for idx in group)
                rate = (examples_seen - session_examples) / max(training_time - session_time, 1e-9)
                emit(StepDone(step, run.total_steps, epoch + 1, loss, examples_seen, rate))
                if steps_in_epoch == len(groups):
                    epoch, steps_in_epoch = epoch + 1, 0
                if not evaluates_after(step, run.steps_per_epoch, options.eval_every):
                    continue
                emit(EvaluationStarted(step, "train+validation"))
                record = evaluation_record(
                    step, epoch + steps_in_epoch / run.steps_per_epoch, examples_seen,
                    evaluate(data.train), evaluate(data.validation), elapsed(), lr,
                )  # fmt: skip
                record = world.decide_once(record)  # the best weights and early stop: decided once
                improved = is_better(record, best)
                if improved:
                    with world.collective():
                        best, best_weights, evals_since_best = record, trainable_weights(model, keep=world.is_main), 0
                else:
                    evals_since_best += 1
                    stopped_early = bool(options.patience and evals_since_best >= options.patience)
                records.append(record)
                if len(records) == 1:
                    # The first checkpoint, written behind the steps, is done by now: waited for
                    # here, its failure (a full disk) stops the run before metrics.jsonl holds an
                    # evaluation, as a run with evaluations but no resume state is one --resume
                    # refuses, though the error would offer it. Waited for before the steps, it
                    # would keep the cache build waiting on a 113 MB write for gpt2-small.
                    writer.wait()
                world.on_main(lambda: runs.write_metrics(run_dir, records), share=False)
                checkpoint()
                emit(Evaluated(record, improved))
                if stopped_early:
                    break

        torch.set_num_threads(threads)
        writer.wait()
        # Every rank takes the best weights (rank 0's), so the test split is scored with them.
        with world.collective():
            set_from_rank0(model, best_weights, world.distributed)
        world.on_main(lambda: write_model(run, model, best_weights, base_ref), share=False)
        if cache.background:  # the test split's states, finished behind the training steps
            cache = replace(cache, background_wait_s=finish_prefix_caches(data))
        emit(EvaluationStarted(step, "test"))
        loop = {"steps": step, "stopped_early": stopped_early, "examples_seen": examples_seen, "wall_time_s": elapsed(), "params": params}
        loop["cpu_threads"], loop["step_threads"] = threads, sorted(step_threads)
        loop["training_time_s"] = training_time
        summary = world.decide_once(summarize(run, model, best, cache, evaluate(data.test), loop))
        summary["calibration"] = calibrate_on_validation(run, model, world, forward)
        world.on_main(lambda: finish(run, summary, records), share=False)
        return summary
    except KeyboardInterrupt:
        if runs.is_finished(run_dir):  # it came once the run was complete: nothing to save or resume
            raise
        # The best weights as of the last checkpoint become a usable classifier (a second
        # Ctrl-C during the write leaves no partial file and the resume state untouched).
        saved = writer.settle()
        if world.is_main:
            write_model(run, model, saved[2], base_ref)
        raise TrainingInterrupted(run_dir, step, saved[0], saved[1]) from None
    except PeerLost as exc:  # another rank died or was stopped: this one stops too
        raise TrainingStopped(str(exc), run_dir, writer.settle()[0]) from None
    except NonFiniteLoss as exc:
        saved = writer.settle()
        where = f"at step {step + 1} (epoch {epoch + 1})" if exc.what == "training" else f"at step {step}"
        if world.is_main:  # no collective here: the other ranks may not have stopped at this point
            write_model(run, model, saved[2], base_ref)
            runs.write_failure(run_dir, f"{exc} {where}", step)
        hint = "try a lower learning rate" + (" or fp32 precision" if precision.name != "fp32" else "")
        raise SpamtuneError(f"{exc} {where}; training stopped, the last checkpoint (step {saved[0]}) is in {run_dir}; {hint}") from None
    except DiskFull as exc:
        raise TrainingStopped(str(exc), run_dir, writer.settle()[0]) from None
    finally:
        torch.set_num_threads(threads)  # a sweep's next run starts with them all
        cancel_prefix_caches(data)  # a run stopped before the test split: its states are not needed


def start_session(
    run: Run, model: GPTModel, step: int, emit: Callable[[Event], None], world: World = World(), base_sha256: str | None = None
) -> PrefixCacheReport:
    """Say what is about to run, then attach the frozen-prefix caches (the session's first cost):
    kept under the data root when ``keep_cache`` is on (``base_sha256`` names the base); under
    several ranks each computes a share and they exchange them, within rank 0's budget."""
    trainable, total = count_parameters(model)
    data = run.data
    emit(TrainingStarted(
        run.run_dir, run.model_label, step, run.total_steps, str(run.precision.device), run.precision.name,
        trainable, total, len(data.train), len(data.validation), len(data.test), data.max_length,
        f"{world.size} ranks, {run.options.strategy}" if world.distributed else "", run.options.warmup_steps,
    ))  # fmt: skip
    budget = world.decide_once(memory_budget_bytes(run.precision.device)) if world.distributed else None
    store = PrefixCacheStore(run.options.data_dir) if run.options.keep_cache else None
    cache = attach_prefix_caches(
        model, data, run.trainable, run.options.pooling, run.precision,
        shortcuts=run.options.shortcuts, on_building=lambda blocks: emit(PrefixCaching(blocks)),
        budget_bytes=budget, build=functools.partial(build_prefix_cache_sharded, world),
        store=store, base_sha256=base_sha256, test_apart=test_split_apart(run.precision, world.distributed),
    )  # fmt: skip
    emit(cache)
    return cache


def evaluation_record(step: int, epoch: float, examples_seen: int, train: tuple, validation: tuple, elapsed: float, lr: float) -> dict:
    """The ``metrics.jsonl`` line of one evaluation from its (loss, accuracy) pairs; ``lr`` is
    the learning rate the step just before it took."""
    for loss, _ in (train, validation):
        if not math.isfinite(loss):
            raise NonFiniteLoss(loss, "evaluation")
    return {
        "step": step, "epoch": round(epoch, 4), "examples_seen": examples_seen,
        "train_loss": train[0], "train_accuracy": train[1], "validation_loss": validation[0], "validation_accuracy": validation[1],
        "elapsed_s": round(elapsed, 3), "lr": lr,
    }  # fmt: skip


def finish(run: Run, summary: dict, records: list[dict]) -> dict:
    """The end of a run: the curves and the summary are written, the resume state removed."""
    plot_curves(records, len(run.data.train), run.run_dir / runs.CURVES_FILE)
    # Ctrl-C held: a run is finished (summary, no resume state) or resumable, never half of each.
    with interrupts_deferred():
        runs.write_summary(run.run_dir, summary)
        shutil.rmtree(run.run_dir / runs.RESUME_DIR, ignore_errors=True)
        runs.release_finished(run.run_dir)
    return summary


def classifier_config(run: Run) -> ClassifierConfig:
    return ClassifierConfig(
        model=run.model_cfg,
        labels=run.data.labels,
        pooling=run.options.pooling,
        max_length=run.data.max_length,
        trainable=run.options.trainable,
        base_model=run.model_cfg.name,
        weights=run.options.weights,
    )


def write_model(run: Run, model: GPTModel, weights: dict[str, torch.Tensor], base_ref: BaseRef | None = None) -> None:
    """``model.safetensors``: the frozen weights with these trainable ones (nothing if there
    are none yet); with ``base_ref``, a compact run instead (the changed tensors and the
    reference). Training is over when this is called, so the model itself takes them, and
    LoRA is merged into it afterwards (the test evaluation then runs at full speed). A sharded
    model is written through a plain copy (``fsdp.plain_copy``): rank 0 alone runs this."""
    if not weights:
        return
    if is_sharded(model):
        model = plain_copy(model, weights, classifier_config(run))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in weights:
                param.copy_(weights[name])
    cfg = classifier_config(run)
    o = run.options
    if base_ref is not None:
        frozen = {name for name, param in model.named_parameters() if not param.requires_grad}  # the base's since the surgery
        save_compact_run(run.run_dir, model, cfg, base_ref, o.data_dir, lora_settings(run), frozen)
        merge_lora(model)
    else:
        save_classifier(run.run_dir, merge_lora(model), cfg)


def lora_settings(run: Run) -> dict | None:
    """What a compact run's ``base.json`` records of LoRA (loading merges A and B with them)."""
    o = run.options
    return {"rank": o.lora_rank, "alpha": o.lora_alpha, "blocks": o.lora_blocks} if run.trainable.preset == "lora" else None


def calibrate_on_validation(run: Run, model: GPTModel, world: World, forward: dict) -> dict | None:
    """``calibration.json`` for the best weights: the temperature fitted on the validation
    split, and the threshold 0.5 on the calibrated probability (``spamtune calibrate`` chooses
    another operating point). Every rank computes the logits of its share of the split; rank 0
    fits and writes, and returns what the summary records of it (the others: None): a run of
    more than two classes records no threshold, since it decides by the most probable class.
    ``forward``: ``predict_logits``'s precision, padding and shortcut."""
    cfg = classifier_config(run)
    with world.collective(), whole_model(model):
        logits = predict_logits_sharded(world, model, run.data.validation, run.options.pooling, **forward)

    def fit() -> dict:
        calibration = calibrate_and_store(run.run_dir, logits, run.data.validation.labels, cfg.labels[cfg.positive_label])
        v = calibration.validation
        fitted = {"temperature": calibration.temperature, "ece_before": v["ece_before"], "ece_after": v["ece_after"]}
        return {**fitted, "threshold": calibration.threshold} if cfg.num_classes == 2 else fitted

    return world.on_main(fit)


def summarize(run: Run, model: GPTModel, best: dict, cache: PrefixCacheReport, test: tuple[float, float], loop: dict) -> dict:
    """``summary.json``: the test (loss, accuracy), the best evaluation's figures, the loop's counters."""
    o = run.options
    test_loss, test_acc = test
    trainable, total = loop["params"]
    return {
        "run": str(run.run_dir),
        "model": run.model_label,
        "weights": o.weights,
        "trainable": o.trainable,
        "pooling": o.pooling,
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "validation_accuracy": best["validation_accuracy"],
        "validation_loss": best["validation_loss"],
        "train_accuracy": best["train_accuracy"],
        "train_loss": best["train_loss"],
        "best_step": best["step"],
        "best_epoch": best["epoch"],
        "steps": loop["steps"],
        "stopped_early": loop["stopped_early"],
        "examples_seen": loop["examples_seen"],
        "wall_time_s": round(loop["wall_time_s"], 3),
        "training_time_s": round(loop["training_time_s"], 3),
        "examples_per_s": round(loop["examples_seen"] / max(loop["training_time_s"], 1e-9), 2),
        "trainable_params": trainable,
        "total_params": total,
        "device": str(run.precision.device),
        # CPU kernels split sums across threads, so bit-identical reruns need the same count;
        # the steps of the book's recipe, alone, give the same numbers on any count, and leave
        # threads to the cache's work behind them while it lasts (``threads_for_steps``).
        "cpu_threads": loop["cpu_threads"],
        "step_threads": loop["step_threads"],
        "precision": run.precision.name,
        "shortcuts": o.shortcuts,
        "prefix_cache": cache.to_dict(),
        "max_length": run.data.max_length,
        "n_train": len(run.data.train),
        "n_validation": len(run.data.validation),
        "n_test": len(run.data.test),
    }
