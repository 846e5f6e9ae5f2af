"""The resume state of an unfinished run: one safetensors file, so weights, optimizer and loop
position always agree.

It holds the trainable weights, the best ones so far (the frozen rest of the model never
changes, so these two and the pretrained file make up both classifiers), AdamW's moments, the
RNG state, the gradient scaler and where the loop stands. Written atomically after every
evaluation: a kill, Ctrl-C or a full disk leaves the previous one whole. No pickle. Tensors are
stored whole even when training shards them (``--strategy fsdp``), so any number of ranks, or one
process, can continue from it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from spamtune.adamw import AdamW
from spamtune.checkpoint import check_state_shapes, save_tensors
from spamtune.device import Precision
from spamtune.errors import SpamtuneError
from spamtune.fsdp import shard_like, whole
from spamtune.interrupts import interrupts_deferred
from spamtune.model import GPTModel, is_integer, is_real, show_value
from spamtune.runs import EVALUATION_FIGURES, normalize_metrics_record, resume_file


def trainable_weights(model: GPTModel, keep: bool = True) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters training changes, whole: a sharded one (``--strategy fsdp``)
    is gathered, so then every rank must call this; only a rank with ``keep`` gets the copies."""
    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            full = whole(param.detach())
            if keep:
                out[name] = full.to("cpu", copy=True)
    return out


def training_state(model: GPTModel, optimizer: AdamW | torch.optim.Optimizer, keep: bool = True) -> dict[str, torch.Tensor]:
    """The trainable weights and AdamW's moments as the resume file stores them, whole (in the
    same form whatever the number of ranks and the strategy); like ``trainable_weights``, every
    rank calls it under FSDP, and only ``keep`` gets the tensors."""
    tensors = {f"model.{n}": t.contiguous() for n, t in trainable_weights(model, keep).items()}
    for index, param_state in optimizer.state_dict()["state"].items():
        for key, value in sorted(param_state.items()):
            full = whole(value.detach())
            if keep:  # a copy: the file may be written while training goes on (WriteBehind)
                tensors[f"optimizer.{index}.{key}"] = full.to("cpu", copy=True).contiguous()
    return tensors


def resume_writer(
    run_dir: Path,
    state: dict[str, torch.Tensor],
    precision: Precision,
    best_weights: dict[str, torch.Tensor],
    position: dict,
    settings: dict | None = None,
) -> Callable[[], None]:
    """The resume state, taken now, as a call that writes it: ``state`` from ``training_state``,
    ``position`` the loop's JSON-ready counters, and the random number generators' and the
    scaler's state as they are at this call. The write may come later, on a side thread
    (``fsutil.WriteBehind``) while training goes on. ``state`` and ``best_weights`` must be
    copies that training does not change (``training_state``, ``trainable_weights``)."""
    tensors = dict(state)
    tensors.update({f"best.{n}": t for n, t in best_weights.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if precision.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(precision.device)
    metadata = {"loop": json.dumps(position), "scaler": json.dumps(precision.scaler.state_dict())}
    if settings is not None:  # what the run trains with (``train.run_settings``), compared on resume
        metadata["settings"] = json.dumps(settings)
    return functools.partial(save_tensors, resume_file(run_dir), tensors, metadata)


def saved_settings(run_dir: Path) -> dict | None:
    """The settings the run's last checkpoint was taken with, or None where it keeps none (a
    checkpoint from before they were kept) or cannot be read (loading it says why)."""
    return _saved_metadata(run_dir, "settings")


def saved_step(run_dir: Path) -> int | None:
    """The step the run's last checkpoint stands at, read without its tensors; None where it
    cannot be read (loading it says why)."""
    position = _saved_metadata(run_dir, "loop")
    step = position.get("step") if isinstance(position, dict) else None
    return step if is_integer(step) and step >= 0 else None


def _saved_metadata(run_dir: Path, key: str):
    """The JSON value under ``key`` in the resume state's metadata, or None."""
    try:
        with safe_open(str(resume_file(run_dir)), framework="pt") as f:
            kept = (f.metadata() or {}).get(key)
        return json.loads(kept) if kept is not None else None
    except (SafetensorError, OSError, ValueError):
        return None


def load_resume_state(
    run_dir: Path, model: GPTModel, optimizer: AdamW | torch.optim.Optimizer, precision: Precision
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Put the saved weights, optimizer, scaler and RNG state back; return the loop position
    and the best weights so far."""
    path = resume_file(run_dir)
    try:
        with interrupts_deferred():  # safetensors would turn a Ctrl-C in the read into a ValueError
            tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        position = json.loads(metadata["loop"])
        scaler_state = json.loads(metadata["scaler"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise SpamtuneError(f"cannot read the resume state {path}: {exc}") from None
    _check_state_layout(path, tensors, position, optimizer_count=sum(p.requires_grad for p in model.parameters()))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    saved = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    best_weights = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
    frozen = {k: v for k, v in model.state_dict().items() if k not in trainable}
    check_state_shapes(model, {**frozen, **saved}, str(path))
    params = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in trainable:
                param.copy_(shard_like(param, saved[name]))  # under FSDP, this rank's shard of it
                params[len(params)] = param  # the optimizer's numbering: trainable parameters in order
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            param = params[int(index)]
            # Moments are shaped like their parameter (and sharded like it); the step count is a scalar.
            optim_state.setdefault(int(index), {})[name] = shard_like(param, value) if value.shape == param.shape else value
    optimizer_sd = optimizer.state_dict()
    optimizer_sd["state"] = optim_state
    optimizer.load_state_dict(optimizer_sd)
    if precision.scaler.is_enabled() and scaler_state:
        precision.scaler.load_state_dict(scaler_state)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and precision.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], precision.device)
    return position, best_weights


def _count(value) -> bool:
    return is_integer(value) and value >= 0


def _seconds(value) -> bool:
    return is_real(value) and value >= 0


# The loop position's fields besides its step (``train_run``'s ``checkpoint``), each with its
# test and what that test asks for, as the error says it.
_LOOP_FIELDS = (
    ("epoch", _count, "a whole number of at least 0"),
    ("steps_in_epoch", _count, "a whole number of at least 0"),
    ("examples_seen", _count, "a whole number of at least 0"),
    ("evals_since_best", _count, "a whole number of at least 0"),
    ("stopped_early", lambda v: isinstance(v, bool), "true or false"),
    ("elapsed_s", _seconds, "a number of seconds"),
    ("training_time_s", _seconds, "a number of seconds"),
)
# What a new evaluation is compared with, and what the summary reports of the best one.
_BEST_FIGURES = ("epoch", *EVALUATION_FIGURES)


def _check_state_layout(path: Path, tensors: dict[str, torch.Tensor], position, optimizer_count: int) -> None:
    """Refuse, in one line, a resume state that is not laid out as ``resume_writer`` lays it
    out (a damaged or hand-edited file): the loop position an object with the step it stands
    at, its counters and the best evaluation so far of the right types, the RNG state bytes, and optimizer state only for the parameters that train."""

    def damaged(what: str) -> SpamtuneError:
        return SpamtuneError(f"cannot read the resume state {path}: {what}")

    if not isinstance(position, dict) or not is_integer(position.get("step")) or position["step"] < 0:
        raise damaged(f"its loop position {show_value(position)} does not say at which step training stands")
    # The loop carries on from these: a wrong type would stop it with a bare TypeError or
    # KeyError, or only at the end, in the comparison with the best evaluation so far.
    for name, ok, wanted in _LOOP_FIELDS:
        if name in position and not ok(position[name]):
            raise damaged(f'its loop position\'s "{name}" is {show_value(position[name])}, not {wanted}')
    best = position.get("best")
    if best is not None:
        best = normalize_metrics_record(best) if isinstance(best, dict) else best
        if not (isinstance(best, dict) and is_integer(best.get("step")) and all(is_real(best.get(k)) for k in _BEST_FIGURES)):
            raise damaged(f'its loop position\'s "best" is {show_value(position["best"])}, not an evaluation record with its step, epoch, losses and accuracies')
    rng = tensors.get("rng.torch")
    if rng is None or rng.dtype != torch.uint8:
        raise damaged("it holds no random number generator state ('rng.torch', bytes)")
    for key in tensors:
        if key.startswith("optimizer."):
            index = key.split(".")[1]
            if not (index.isdigit() and int(index) < optimizer_count and key.count(".") == 2):
                raise damaged(f"'{key}' is not the optimizer state of one of the {optimizer_count} parameters the run trains")
