"""What training reports while it runs (events passed to ``on_event``) and how it stops early
(exceptions). The training code never prints; the CLI renders these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spamtune.errors import SpamtuneError
from spamtune.prefix_cache import PrefixCacheReport


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
    parallel: str = ""  # how several ranks share the run ("2 ranks, fsdp"); empty for one process
    warmup_steps: int = 0


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
    weights so far (``best_step``, None before the first evaluation) are its classifier."""

    exit_code = 130

    def __init__(self, run_dir: Path, step: int, checkpoint_step: int, best_step: int | None = None):
        super().__init__(f"interrupted at step {step}")
        self.run_dir, self.step, self.checkpoint_step, self.best_step = run_dir, step, checkpoint_step, best_step


class TrainingStopped(SpamtuneError):
    """A failure the run can be resumed after (a full disk): its last checkpoint is intact."""

    def __init__(self, reason: str, run_dir: Path, checkpoint_step: int):
        super().__init__(f"{reason}; the last checkpoint (step {checkpoint_step}) is intact in {run_dir}")
        self.run_dir, self.checkpoint_step = run_dir, checkpoint_step
