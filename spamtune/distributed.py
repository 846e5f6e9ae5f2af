"""Several processes, one run: PyTorch's ``torch.distributed`` as ``torchrun`` sets it up.

``torchrun --nproc-per-node N -m spamtune finetune ...`` starts N processes (ranks) with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in their environment;
``init_from_env`` joins them into one process group (NCCL between GPUs, gloo on CPUs), with a
timeout so that a rank that dies or hangs makes the others fail instead of waiting forever.
``launch`` is ``--devices N``: the same thing started from inside spamtune through torch's
elastic launcher.

``World`` is what the rest of spamtune asks: which rank am I, how many are there, my share of a
batch or of a split, the sum of a metric over all ranks, a decision taken once on rank 0 and
given to all. A process started without torchrun is a world of one, where every one of these
is the identity, so single-process code paths stay exactly what they were.

The rule that keeps N ranks equal to one process: every rank computes the same batch order
from the seed, takes a contiguous share of each batch, and weights its loss by its share of
the global batch, so the gradients DDP averages are those of the single-process mean. Only
rank 0 writes files and reports progress.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist

from spamtune.errors import RanksInterrupted, SpamtuneError, SpamtuneUsageError
from spamtune.interrupts import INTERRUPT_NOTE_ENV

if TYPE_CHECKING:
    from spamtune.examples import Examples
    from spamtune.model import GPTModel
    from spamtune.prefix_cache import FrozenPrefixCache

T = TypeVar("T")

# How long a collective waits for the other ranks before failing. A dead peer is usually
# noticed at once (its sockets close); this bounds the case where a peer hangs. Long enough
# for rank 0 to write gpt2-xl's 6 GB model while the others wait at the next collective.
TIMEOUT_ENV = "SPAMTUNE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600


class PeerLost(SpamtuneError):
    """A collective failed: another rank died, was interrupted or timed out."""

    def __init__(self, detail: str):
        first_line = detail.strip().splitlines()[0] if detail.strip() else "no detail"
        super().__init__(f"lost contact with the other ranks ({first_line[:200]})")


def launched_by_torchrun() -> bool:
    """``torchrun`` (or ``--devices``) started this process as one rank of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise SpamtuneError(f"{TIMEOUT_ENV} must be a number of seconds, not '{raw}'") from None
    if value <= 0:
        raise SpamtuneError(f"{TIMEOUT_ENV} must be positive, not {raw}")
    return value


def init_from_env(device: str = "auto") -> World:
    """Join the process group torchrun describes in the environment, once; a world of one
    when this process was not started by torchrun. ``device``: the run's ``--device``, which
    picks NCCL (CUDA) or gloo (everything else). Each rank on a CUDA machine takes the GPU of
    its ``LOCAL_RANK``."""
    if not launched_by_torchrun() or dist.is_initialized():
        return World.current()
    use_cuda = _ranks_use_cuda(device)
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise SpamtuneError(
                f"rank with LOCAL_RANK {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_seconds()))
    except (RuntimeError, ValueError) as exc:
        raise SpamtuneError(f"cannot join the other ranks: {str(exc).strip().splitlines()[0]}") from None
    return World.current()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def share_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank's contiguous share of ``n`` items; shares differ by at most one."""
    return n * rank // size, n * (rank + 1) // size


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a job (``size == 1``: a plain single process)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run folder, the output file and the progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def device(self) -> torch.device:
        """Where collective tensors live: the current GPU under NCCL, else the CPU."""
        if self.distributed and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def share(self, items: list[T]) -> list[T]:
        """This rank's contiguous share of ``items`` (possibly empty when there are fewer items than ranks)."""
        start, stop = share_bounds(len(items), self.rank, self.size)
        return items[start:stop]

    # ----------------------------------------------------------------- collectives

    @contextlib.contextmanager
    def collective(self) -> Iterator[None]:
        """Turn the failure of a collective (a dead or interrupted peer, a timeout) into ``PeerLost``."""
        if not self.distributed:
            yield
            return
        try:
            yield
        except dist.DistError as exc:
            raise PeerLost(str(exc)) from None
        except RuntimeError as exc:  # gloo reports a closed connection as a plain RuntimeError
            text = str(exc)
            if any(word in text for word in ("Connection closed", "Connection reset", "Timed out", "timed out", "Gloo", "NCCL")):
                raise PeerLost(text) from None
            raise

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all ranks (float64, so counts stay exact)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        with self.collective():
            dist.all_reduce(tensor)
        return tensor.tolist()

    def decide_once(self, value: T) -> T:
        """Rank 0's ``value`` on every rank: a decision (best weights, stop) taken once, so
        ranks can never disagree about it even if their own numbers differed in the last bit."""
        if not self.distributed:
            return value
        box = [value]
        with self.collective():
            dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def on_main(self, action: Callable[[], T], share: bool = True) -> T | None:
        """Run ``action`` on rank 0 only (creating a folder, taking a lock) and tell the others
        how it went: its result when ``share``, else None; if it raised, every rank raises (rank 0
        its own error, the others a ``SpamtuneError`` with the same message and exit code), so no
        rank waits for one that gave up."""
        if not self.distributed:
            return action()
        outcome: tuple = ("ok", None, 0)
        result = None
        if self.is_main:
            try:
                result = action()
                outcome = ("ok", result if share else None, 0)
            except SpamtuneError as exc:
                self.decide_once(("error", str(exc), exc.exit_code))
                raise
            except BaseException as exc:
                self.decide_once(("error", f"rank 0 failed: {type(exc).__name__}: {exc}", 1))
                raise
        status, payload, code = self.decide_once(outcome)
        if status == "error":
            error = SpamtuneError(payload)
            error.exit_code = code
            raise error
        return result if self.is_main else payload

    def gather_to_main(self, value: T) -> list[T] | None:
        """Every rank's ``value``, in rank order, on rank 0 (None on the others)."""
        if not self.distributed:
            return [value]
        out = [None] * self.size if self.is_main else None
        with self.collective():
            dist.gather_object(value, out, dst=0)
        return out

    def all_gather_rows(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``[n_r, ...]`` tensor (n_r may differ), in rank order, on every rank, on
        the device ``rows`` is on (they travel through the backend's: gloo has no MPS)."""
        if not self.distributed:
            return [rows]
        home, rows = rows.device, rows.to(self.device)
        with self.collective():
            counts = torch.tensor([rows.shape[0]], device=rows.device)
            all_counts = [torch.zeros_like(counts) for _ in range(self.size)]
            dist.all_gather(all_counts, counts)
            most = int(max(c.item() for c in all_counts))
            padded = rows.new_zeros((most, *rows.shape[1:]))
            padded[: rows.shape[0]] = rows
            gathered = [torch.empty_like(padded) for _ in range(self.size)]
            dist.all_gather(gathered, padded)
        return [g[: int(c.item())].to(home) for g, c in zip(gathered, all_counts)]

    def barrier(self) -> None:
        if self.distributed:
            with self.collective():
                dist.barrier()


@contextlib.contextmanager
def run_lock(world: World, run_dir) -> Iterator[None]:
    """``runs.lock_run_dir`` held by rank 0 for the whole job; every rank fails if it is taken."""
    from spamtune import runs

    lock = world.on_main(lambda: runs.lock_run_dir(run_dir), share=False)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


# --------------------------------------------------------------------------- training


class _Classify(torch.nn.Module):
    """``GPTModel.classify`` as a module's ``forward``: DDP synchronises gradients of what goes
    through its wrapper's ``forward``, and the classifier's training path is ``classify``."""

    def __init__(self, model: GPTModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, lengths, pooling, prefix, start_block, last_query_only):
        return self.model.classify(
            input_ids, lengths, pooling, prefix=prefix, start_block=start_block, last_query_only=last_query_only
        )


class DataParallelClassifier:
    """A ``GPTModel`` under ``DistributedDataParallel``, with the ``classify`` method a ``Batch``
    calls. Gradients of the trainable parameters are averaged over the ranks during backward."""

    def __init__(self, model: GPTModel, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        # Every trainable tensor gets a gradient in every step (checked for the presets by the
        # tests), so DDP need not search the graph for unused ones.
        self.ddp = DistributedDataParallel(_Classify(model), device_ids=device_ids)

    def classify(self, input_ids, lengths, pooling, *, prefix=None, start_block=0, last_query_only=True):
        return self.ddp(input_ids, lengths, pooling, prefix, start_block, last_query_only)

    def no_sync(self):
        return self.ddp.no_sync()


def loss_weights(world: World, share_sizes: list[int], global_sizes: list[int]) -> list[float]:
    """Per micro-batch, the factor of this rank's mean loss so that the gradients DDP averages
    (a mean over ranks) equal the single-process gradient of the whole step: the mean loss over
    all its examples. A rank's share of ``k`` of the step's ``n`` examples weighs ``k / n``;
    DDP divides by the number of ranks, so it is multiplied back."""
    n = sum(global_sizes)
    return [world.size * k / n for k in share_sizes]


# --------------------------------------------------------------------------- evaluation


def shard_examples(world: World, examples: Examples) -> Examples:
    """This rank's contiguous share of a split, with its cache rows."""
    from spamtune.examples import Examples

    indices = world.share(list(range(len(examples))))
    labels = None if examples.labels is None else [examples.labels[i] for i in indices]
    cache = None
    if examples.cache is not None:
        c, rows = examples.cache, torch.tensor(indices, dtype=torch.long)
        cache = type(c)(c.start_block, c.states, c.offsets[rows], c.lengths[rows])
    return Examples([examples.tokens[i] for i in indices], labels, cache, examples.pad_id)


def evaluate_sharded(
    world: World, model: GPTModel, examples: Examples, pooling: str, positive: int | None = None, **forward
) -> tuple[float, float]:
    """(mean loss, accuracy) over the whole split, each rank computing its share: the sums of
    loss and of correct answers are added over the ranks, then divided by the split's size."""
    from spamtune.forward import classification_loss, decided_classes, evaluate_examples, predict_logits

    if not world.distributed:
        return evaluate_examples(model, examples, pooling, positive, **forward)
    mine = shard_examples(world, examples)
    loss_sum, correct = 0.0, 0.0
    if len(mine):
        logits = predict_logits(model, mine, pooling, **forward)
        labels = torch.tensor(mine.labels, dtype=torch.long)
        loss_sum = classification_loss(logits, labels).item() * len(labels)  # the one loss, as a sum
        correct = float((decided_classes(logits, positive) == labels).sum())
    total_loss, total_correct = world.sum([loss_sum, correct])
    return total_loss / len(examples), total_correct / len(examples)


def predict_logits_sharded(world: World, model: GPTModel, examples: Examples, pooling: str, **forward) -> torch.Tensor:
    """``forward.predict_logits`` over the whole of ``examples``, each rank computing its
    contiguous share; the shares are all-gathered in rank order, which is input order."""
    from spamtune.forward import predict_logits

    if not world.distributed:
        return predict_logits(model, examples, pooling, **forward)
    mine = shard_examples(world, examples)
    logits = predict_logits(model, mine, pooling, **forward) if len(mine) else torch.zeros(0, model.num_classes)
    return torch.cat(world.all_gather_rows(logits.to(world.device))).cpu()


# --------------------------------------------------------------------------- prefix cache


def build_prefix_cache_sharded(world: World, model: GPTModel, token_lists: list[list[int]], start: int, **build) -> FrozenPrefixCache | None:
    """``prefix_cache.build_prefix_cache`` with the work split: each rank computes the frozen
    blocks' outputs for every ``size``-th distinct message, the pieces are all-gathered, and
    every rank assembles the same full cache. N ranks build it about N times faster."""
    from spamtune.prefix_cache import FrozenPrefixCache, build_prefix_cache

    if not world.distributed:
        return build_prefix_cache(model, token_lists, start, **build)
    distinct = list(dict.fromkeys(map(tuple, token_lists)))
    mine = [list(distinct[i]) for i in range(world.rank, len(distinct), world.size)]
    part = build_prefix_cache(model, mine, start, **build) if mine else None
    built = world.sum([0.0 if mine and part is None else 1.0])[0] == world.size
    if not built:  # a rank could not fit even its share: every rank falls back together
        return None
    emb_dim = model.cfg.emb_dim
    dtype = build.get("dtype", torch.float32)
    device = build["precision"].device if build.get("precision") is not None else torch.device("cpu")
    if part is None:
        part = FrozenPrefixCache(start, torch.empty(0, emb_dim, dtype=dtype, device=device), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    # Each part's states are laid out in its messages' order; concatenated in rank order, a
    # message's rows start at its rank's base plus its offset within the part.
    parts = world.all_gather_rows(part.states)
    lengths = torch.tensor([len(t) for t in distinct], dtype=torch.long)
    offsets = torch.zeros_like(lengths)
    base = 0
    for r, states in enumerate(parts):
        ranks_lengths = lengths[r :: world.size]
        part_offsets = torch.zeros_like(ranks_lengths)
        part_offsets[1:] = torch.cumsum(ranks_lengths, 0)[:-1]
        offsets[r :: world.size] = base + part_offsets
        base += states.shape[0]
    slot = {t: i for i, t in enumerate(distinct)}
    slot_of = torch.tensor([slot[tuple(t)] for t in token_lists], dtype=torch.long)
    return FrozenPrefixCache(start, torch.cat(parts), offsets[slot_of], lengths[slot_of])


# --------------------------------------------------------------------------- launching


class WorkersFailed(SpamtuneError):
    """``--devices N``: a worker process failed; its own error line is above on stderr."""


def launch(nproc: int, argv: list[str]) -> None:
    """Run ``python -m spamtune <argv>`` as ``nproc`` ranks on this machine through torch's
    elastic launcher (what ``torchrun --standalone --nproc-per-node N`` does) and wait for
    them. Raises ``WorkersFailed`` with the first failed worker's exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "--module", "spamtune"])
    # Set after parsing: the launcher's parser would read spamtune's own options (--run) as its own.
    args.training_script_args = list(argv)
    from torch.distributed.elastic.multiprocessing.api import SignalException

    # The workers print their own one-line errors; the launcher's log of the same failure (or
    # of a Ctrl-C) is noise. Its loggers each set their own level, so each is quietened.
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    # torchrun's default for several ranks, set here so that it does not warn about it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The launcher keeps each rank's error report in a log folder, by default a new folder under
    # /tmp that it never removes: one left behind per command. Its reports are read by the time
    # it returns or raises, so the folder goes with the ranks.
    logs = tempfile.TemporaryDirectory(prefix="spamtune-ranks-")
    args.log_dir = logs.name
    said = Path(logs.name) / "interrupt-said"
    os.environ[INTERRUPT_NOTE_ENV] = str(said)  # the ranks inherit it
    try:
        run(args)
    except SignalException as exc:  # Ctrl-C (or a kill): passed on to the ranks, which have ended
        raise RanksInterrupted(exc.sigval, said=said.exists()) from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else 1
        error = WorkersFailed(f"rank {rank} of {nproc} exited with status {failure.exitcode}; the other ranks were stopped")
        error.exit_code = code
        raise error from None
    finally:
        os.environ.pop(INTERRUPT_NOTE_ENV, None)
        logs.cleanup()


def strip_devices(argv: list[str]) -> list[str]:
    """The command line without ``--devices N`` (each rank is one device)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            out.append(arg)
    return out


def _ranks_use_cuda(device: str) -> bool:
    """Whether ranks started for ``--device device`` each take a GPU (``init_from_env``)."""
    return device != "cpu" and not device.startswith("mps") and torch.cuda.is_available()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_rank_count(devices: int, device: str) -> None:
    """Refuse, before any is started, more ranks than this machine has devices for. On CUDA each
    rank takes a GPU of its own, so one past the count could only fail once launched. On the CPU
    each rank is a whole interpreter with a model copy, and ranks beyond the cores only take
    turns on them: slower training, more memory. Two are always allowed, so the several-rank
    path can be tried on a one-core machine too (two ranks on one core are slow, not stuck)."""
    if _ranks_use_cuda(device):
        gpus = torch.cuda.device_count()
        if devices > gpus:
            raise SpamtuneUsageError(
                f"--devices {devices} asks for more ranks than the {gpus} GPU{'s' if gpus != 1 else ''} this machine has "
                f"(each rank takes one); pass at most --devices {gpus}, or --device cpu"
            )
        return
    cores = usable_cores()
    if devices > max(2, cores):
        raise SpamtuneUsageError(
            f"--devices {devices} asks for more CPU ranks than the {cores} core{'s' if cores != 1 else ''} this process "
            f"may use, which only slows training; pass at most --devices {max(2, cores)}"
        )


def will_launch(devices: int | None, device: str = "auto") -> bool:
    """Whether ``--devices N`` starts N ranks of this command (given outside torchrun, N > 1).
    ``device``: the command's ``--device``, which decides what each rank runs on."""
    if devices is not None and devices < 1:
        raise SpamtuneUsageError(f"--devices must be at least 1 (got {devices})")
    if devices is None or devices < 2 or launched_by_torchrun():
        return False
    from spamtune.device import resolve_device

    resolve_device(device)  # "--device cuda" where there is none: one line here, not one per rank
    check_rank_count(devices, device)
    return True


def maybe_launch(devices: int | None, argv: list[str], device: str = "auto") -> bool:
    """``--devices N`` given outside torchrun: launch N ranks of this same command, return
    True once they are done. Otherwise False: this process does the work itself."""
    if not will_launch(devices, device):
        return False
    launch(devices, strip_devices(argv))
    return True
