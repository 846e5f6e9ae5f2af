"""Learning-rate schedules and gradient clipping (the book's appendix D), as options.

A schedule is a function of the optimizer step (0 for the first update) giving a multiplier of
the base ``--lr``, the form ``torch.optim.lr_scheduler.LambdaLR`` takes (``LearningRateSchedule`` applies it). Optional linear warmup
rises over ``warmup_steps`` updates to the full rate; ``cosine`` and ``linear`` then decay to
zero at ``total_steps``. The defaults are the book's chapter 6: a constant rate, no warmup, no
clipping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from spamtune.errors import OptionError
from spamtune.options import SCHEDULES



def check_schedule_options(schedule: str, warmup_steps: int, clip_grad_norm: float | None) -> None:
    """One usage error per bad option (an ``OptionError``: the command line names the flag, a
    resumed run's hparams.json the field)."""
    if schedule not in SCHEDULES:
        raise OptionError("schedule", f"unknown {{option}} '{schedule}'; choose one of: {', '.join(SCHEDULES)}")
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise OptionError("warmup_steps", f"must be 0 or more (got {warmup_steps})")
    if clip_grad_norm is not None and not (math.isfinite(clip_grad_norm) and clip_grad_norm > 0):
        raise OptionError("clip_grad_norm", f"must be a positive number (got {clip_grad_norm})")


def lr_multiplier(step: int, schedule: str = "constant", warmup_steps: int = 0, total_steps: int = 1) -> float:
    """The share of the base learning rate used by update ``step`` (0-based).

    Warmup gives update ``s < warmup_steps`` the share ``(s + 1) / (warmup_steps + 1)``, so the
    first update already moves the weights and the rate reaches its peak right after warmup.
    The decay then runs over the remaining updates: ``cosine`` ``(1 + cos(pi * p)) / 2`` and
    ``linear`` ``1 - p``, ``p`` going from 0 at the first update after warmup to 1 at
    ``total_steps`` (updates past the end keep the final share).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise OptionError("schedule", f"unknown {{option}} '{schedule}'; choose one of: {', '.join(SCHEDULES)}")


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """``lr_multiplier`` with the run's settings bound: what ``LearningRateSchedule`` applies."""
    check_schedule_options(schedule, warmup_steps, None)
    return lambda step: lr_multiplier(step, schedule, warmup_steps, total_steps)


class LearningRateSchedule:
    """Sets each parameter group's rate to its base rate times ``multiplier(step)``: at the start
    for update ``start_step``, then after every update (``step()``), as ``LambdaLR`` does. It
    works with any optimizer that has ``param_groups`` (``spamtune.adamw.AdamW`` is not a
    ``torch.optim.Optimizer``, which ``LambdaLR`` insists on)."""

    def __init__(self, optimizer, multiplier: Callable[[int], float], start_step: int = 0):
        self.param_groups = optimizer.param_groups
        self.base_lrs = [group["lr"] for group in self.param_groups]
        self.multiplier = multiplier
        self.last_step = start_step
        self._apply()

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def _apply(self) -> None:
        for group, base_lr in zip(self.param_groups, self.base_lrs):
            group["lr"] = base_lr * self.multiplier(self.last_step)


def make_scheduler(
    optimizer, schedule: str = "constant", warmup_steps: int = 0, total_steps: int = 1, start_step: int = 0
) -> LearningRateSchedule:
    """The schedule to step once after each optimizer update. Its only state is the step count,
    so a resumed run passes the updates already done as ``start_step`` and continues with the
    rates an uninterrupted run would have used."""
    return LearningRateSchedule(optimizer, lr_lambda(schedule, warmup_steps, total_steps), start_step)


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float | None) -> float | None:
    """Scale the gradients down so their joint L2 norm is at most ``max_norm``; returns the norm
    before clipping (None when clipping is off). With a ``GradScaler``, unscale first."""
    if max_norm is None:
        return None
    params = [p for p in parameters if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
