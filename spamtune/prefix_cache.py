"""Frozen-prefix cache: run the frozen blocks once per example, not once per epoch.

With the first K transformer blocks frozen and dropout off, their output for a given message
never changes during training. The book recomputes it for every batch of every epoch and for
every evaluation; here it is computed once, without autograd, and the trainable blocks start
from it. Because attention is causal and messages are right-padded, a message's cached
states do not depend on what it was batched with, so the result is the same as the plain
forward pass (up to float rounding). Identical messages (the SMS data repeats ~8% of them)
share one slot, so they are computed once too, and messages that open with the same dozen or
more tokens (spam templates) have that prefix computed once, the rest of each attending to
its cached keys and values (6.7% fewer tokens on the SMS data).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from spamtune import paths
from spamtune.data import pad_batch, sorted_batches
from spamtune.device import Precision
from spamtune.examples import TrainingData
from spamtune.forward import eval_mode
from spamtune.idle_work import IdleWork, idle_priority_available, run_on_threads, split_threads
from spamtune.linear import packed_weights, packing_dtype
from spamtune.model import GPTModel, Trainable
from spamtune.tokenizer import EOT_ID

if TYPE_CHECKING:
    from spamtune.cache_store import PrefixCacheStore

DEFAULT_BUDGET_BYTES = 4 << 30


@dataclass
class FrozenPrefixCache:
    """Residual-stream states after block ``start_block - 1`` for a list of examples.

    All examples' states are kept on the compute device in one flat ``[total_tokens, emb_dim]``
    tensor; ``offsets`` and ``lengths`` locate each example in it (duplicates share a slot).
    ``pending``: the work still computing the states of examples ``pending_from`` on (see
    ``build_prefix_cache``'s ``later_from``); ``batch`` finishes it before it reads them.
    """

    start_block: int
    states: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    pending: IdleWork | None = field(default=None, repr=False, compare=False)
    pending_from: int = 0

    @property
    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, start: int, stop: int) -> FrozenPrefixCache:
        """Examples ``start:stop``, sharing this cache's storage (one cache serves several splits);
        it waits for ``pending`` only if some of them do."""
        pending = self.pending if self.pending is not None and stop > self.pending_from else None
        return FrozenPrefixCache(
            self.start_block, self.states, self.offsets[start:stop], self.lengths[start:stop], pending, max(0, self.pending_from - start)
        )

    def finish(self) -> None:
        """Wait for the states still being computed (none: returns at once)."""
        if self.pending is not None:
            self.pending.finish()

    def batch(self, indices: list[int], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (with zeros) ``(prefix [b, t, d], lengths [b])`` for the given examples.

        Each example's states are one contiguous slice, copied into a zeroed batch: a training
        step takes its batch from here, and the single gather this replaced (an index per
        position, then a mask for the padding) took 0.5 ms against 0.15 ms for these copies,
        ~0.3 s of a run from its kept cache on the 2-core EPYC.
        """
        self.finish()
        lengths = self.lengths[indices]
        spans = list(zip(self.offsets[indices].tolist(), lengths.tolist()))
        prefix = self.states.new_zeros(len(spans), max(n for _, n in spans), self.states.shape[1])
        for row, (start, n) in zip(prefix, spans):
            row[:n] = self.states[start : start + n]
        return prefix.to(device, non_blocking=True), lengths.to(device)


def cacheable_blocks(model: GPTModel, trainable: Trainable) -> int:
    """How many leading blocks can be cached: the frozen ones, if dropout cannot alter them."""
    if model.cfg.drop_rate > 0 or trainable.embeddings:
        return 0
    return trainable.first_block


def memory_budget_bytes(device: torch.device | str) -> int:
    """How much a cache may hold on ``device``: 30% of a GPU's free memory (training needs the
    rest), half the CPU's free memory, at most ``DEFAULT_BUDGET_BYTES`` on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(0.3 * torch.cuda.mem_get_info(device)[0])
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not Linux: trust the default
        return DEFAULT_BUDGET_BYTES
    return min(DEFAULT_BUDGET_BYTES, free // 2)


def distinct_token_count(token_lists: list[list[int]]) -> int:
    """Rows of a cache of these token lists: each distinct message's tokens, once."""
    return sum(len(t) for t in {tuple(t) for t in token_lists})


def estimate_cache_bytes(token_lists: list[list[int]], emb_dim: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the cache of these token lists takes, counting each distinct message once."""
    return distinct_token_count(token_lists) * emb_dim * torch.empty((), dtype=dtype).element_size()


# Messages that share at least this many leading tokens (the SMS spam templates) have that
# prefix computed once. Measured on the balanced SMS split: 6.7% fewer tokens through the
# frozen blocks at 12; lower thresholds group more messages behind shorter prefixes.
MIN_SHARED_PREFIX = 12


# The batches of a cache's later part (``build_prefix_cache``'s ``later_from``) hold at most this
# many token positions: 16 short messages, or 4 of 120 tokens (~0.4 s on one EPYC core for
# gpt2-small's 11 frozen blocks).
LATER_BATCH_TOKENS = 512


def common_prefix_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def shared_prefix_groups(seqs: list[tuple[int, ...]], min_shared: int = MIN_SHARED_PREFIX) -> list[tuple[int, list[int]]]:
    """``(prefix length, member indices)`` for each run of two or more messages that share at
    least ``min_shared`` leading tokens: neighbours in sorted order, sharing what all share."""
    order = sorted(range(len(seqs)), key=seqs.__getitem__)
    groups: list[tuple[int, list[int]]] = []
    members, shared = order[:1], None
    for prev, cur in zip(order, order[1:]):
        n = common_prefix_length(seqs[prev], seqs[cur])
        if n >= min_shared:
            members.append(cur)
            shared = n if shared is None else min(shared, n)
            continue
        if len(members) > 1:
            groups.append((shared, members))
        members, shared = [cur], None
    if len(members) > 1:
        groups.append((shared, members))
    return groups


def _frozen_outputs(model: GPTModel, blocks: int, ids: torch.Tensor, positions: torch.Tensor, past=None, past_valid=None):
    """Output of the first ``blocks`` blocks and each one's keys/values; ``past``: per block,
    the keys/values of earlier positions that ``ids`` (at ``positions``) continue."""
    x = model.embed(ids, positions)
    kvs = []
    for i, block in enumerate(model.trf_blocks[:blocks]):
        x, kv = block.forward_after(x, None if past is None else past[i], past_valid)
        kvs.append(kv)
    return x, kvs


@torch.no_grad()
def build_prefix_cache(
    model: GPTModel,
    token_lists: list[list[int]],
    start: int,
    *,
    precision: Precision | None = None,
    batch_size: int = 16,  # measured ~7% faster than 32 for gpt2-small on CPU, fp32 and bf16
    pad_id: int = EOT_ID,
    dtype: torch.dtype = torch.float32,
    budget_bytes: int | None = None,
    min_shared: int = MIN_SHARED_PREFIX,
    states_out: torch.Tensor | None = None,
    later_from: int | None = None,
    progress: BuildProgress | None = None,
) -> FrozenPrefixCache | None:
    """Cache the outputs of the first ``start`` blocks (``cacheable_blocks``), or return None
    when that is none or it would not fit. ``precision`` (default fp32 on the CPU) gives the
    device and the autocast of the computation.

    States are stored in fp32 by default even under bf16 autocast, because the plain forward
    keeps its residual stream in fp32 too (embeddings are fp32 and additions promote); a
    smaller ``dtype`` halves memory at the cost of that exactness. Messages that share a long
    prefix (``shared_prefix_groups``) get it computed once: causal attention makes a prefix's
    states the same in every message that starts with it, and the rest of each message attends
    to the prefix's cached keys and values. ``states_out`` (``[distinct tokens, emb_dim]``, see
    ``distinct_token_count``) receives the states instead of a new tensor: a memory-mapped file
    for a cache kept on disk (``spamtune.cache_store``), which need not fit in memory.

    On a CPU every batch runs with one OpenMP thread, on this thread and as many more as it
    has (``idle_work.run_on_threads``): PyTorch's products round differently on one thread
    than on several, and a kept cache is read by later runs whatever their thread count.

    ``later_from``: the examples from this index on (the test split, read once training is
    over) are batched apart, in smaller batches (at most ``LATER_BATCH_TOKENS`` token
    positions), and, where workers can take them (several threads and an idle scheduling
    priority), computed after this returns: their part of the work (what the earlier examples
    do not need) then runs as ``IdleWork`` at idle priority, on the workers ``split_threads``
    gives the current thread count, on the cores the training steps leave them
    (``spamtune.train.threads_for_steps``), and is the returned cache's ``pending``; small
    batches, so that those the workers still hold when the states are needed are soon done.
    Elsewhere they are computed at once, in the same batches. The states are the one-pass
    build's to float rounding (other batches), and the same at every build, on any thread
    count: ``IdleWork`` too runs each batch with one thread, whichever thread takes it and
    however many workers there are. The packed weights (``packed_frozen_weights``, if they fit
    the budget) and the shared prefixes' keys and values are kept until that work ends.

    ``progress`` (with ``states_out``: a kept cache's file) records each batch as it is written,
    so that a build stopped by Ctrl-C can be resumed: the batches its ``done`` names, if planned
    as they are now, are not computed again, but for those that hold shared prefixes while a
    message continuing one is still to do (their keys and values are not kept).
    """
    precision = precision or Precision("fp32", "cpu")
    device = precision.device
    if budget_bytes is None:
        budget_bytes = memory_budget_bytes(device)
    if start == 0 or (states_out is None and estimate_cache_bytes(token_lists, model.cfg.emb_dim, dtype) > budget_bytes):
        return None
    slots: dict[tuple[int, ...], int] = {}
    slot_of = torch.tensor([slots.setdefault(tuple(t), len(slots)) for t in token_lists], dtype=torch.long)
    distinct = list(slots)
    lengths = torch.tensor([len(t) for t in distinct], dtype=torch.long)
    offsets = torch.zeros_like(lengths)
    offsets[1:] = torch.cumsum(lengths, 0)[:-1]
    shape = (int(lengths.sum()), model.cfg.emb_dim)
    if states_out is not None and (tuple(states_out.shape) != shape or states_out.dtype != dtype):
        raise ValueError(f"states_out is {tuple(states_out.shape)} {states_out.dtype}, the cache needs {shape} {dtype}")
    states = torch.empty(shape, dtype=dtype, device=device) if states_out is None else states_out

    @torch.no_grad()  # grad mode is per thread: the background thread needs its own
    def run(rows: list[tuple[int, ...]], first: list[int], past=None, past_valid=None):
        """Outputs and keys/values of token ``rows``, row r starting at position ``first[r]``."""
        ids, _ = pad_batch([list(r) for r in rows], pad_id, device)
        positions = torch.tensor(first, device=device)[:, None] + torch.arange(ids.shape[1], device=device)
        positions.clamp_(max=model.cfg.context_length - 1)  # only padding can go past the end
        with precision.forward_context():
            x, kvs = _frozen_outputs(model, start, ids, positions, past, past_valid)
        return x.to(dtype), kvs

    def store(slot: int, first: int, values: torch.Tensor) -> None:
        states[offsets[slot] + first : offsets[slot] + first + len(values)] = values

    groups = shared_prefix_groups(distinct, min_shared) if min_shared else []
    # The prefixes' keys/values are held until the second pass: 2 x blocks x emb_dim numbers
    # per prefix token (~1.1x the cache itself on the SMS data). Skip sharing if they do not fit.
    kv_bytes = sum(p for p, _ in groups) * 2 * start * model.cfg.emb_dim * 4
    in_memory = 0 if states_out is not None else states.numel() * states.element_size()
    if in_memory + kv_bytes > budget_bytes:
        groups, kv_bytes = [], 0
    packed = packed_frozen_weights(model.trf_blocks[:start], precision, budget_bytes - in_memory - kv_bytes)
    grouped = {i for _, members in groups for i in members}
    # First pass: every message outside a group in full, and each group's shared prefix, in
    # one set of length-sorted batches; the prefixes' keys/values are kept for the second.
    rows = [(distinct[i], [i], None) for i in range(len(distinct)) if i not in grouped]
    rows += [(distinct[members[0]][:p], members, g) for g, (p, members) in enumerate(groups)]
    kv_of: list = [None] * len(groups)
    # Second pass: each member's remaining tokens, attending to its group's prefix.
    rests = [(g, p, m) for g, (p, members) in enumerate(groups) for m in members if len(distinct[m]) > p]

    def first_pass(batch: list[int]) -> None:
        x, kvs = run([rows[j][0] for j in batch], [0] * len(batch))
        for row, j in enumerate(batch):
            tokens, slots_here, g = rows[j]
            for slot in slots_here:
                store(slot, 0, x[row, : len(tokens)])
            if g is not None:
                kv_of[g] = [(k[row, :, : len(tokens)].clone(), v[row, :, : len(tokens)].clone()) for k, v in kvs]

    def second_pass(batch: list[int]) -> None:
        chosen = [rests[j] for j in batch]
        shared = torch.tensor([p for _, p, _ in chosen])
        # Each row's prefix keys/values, right-padded to the longest; past_valid masks the padding.
        past = [
            tuple(
                pad_sequence([kv_of[g][layer][i].transpose(0, 1) for g, _, _ in chosen], batch_first=True).transpose(1, 2)
                for i in (0, 1)
            )
            for layer in range(start)
        ]
        past_valid = (torch.arange(int(shared.max()))[None, :] < shared[:, None]).to(device)
        out, _ = run([distinct[m][p:] for _, p, m in chosen], shared.tolist(), past, past_valid)
        for row, (_, p, m) in enumerate(chosen):
            store(m, p, out[row, : len(distinct[m]) - p])

    def stages(first: list[int], second: list[int], max_tokens: int | None = None) -> list[list[list[int]]]:
        """The two passes over the chosen rows and rests, as lists of batches (of indices into them)."""
        widths = [len(rows[j][0]) for j in first], [len(distinct[rests[j][2]]) - rests[j][1] for j in second]
        return [
            [[chosen[k] for k in idx] for idx in sorted_batches(width, batch_size, max_tokens=max_tokens)]
            for chosen, width in ((first, widths[0]), (second, widths[1]))
        ]

    # What the examples before ``later_from`` need: their slots, and the prefixes of their groups.
    needed = set(slot_of[:later_from].tolist()) if later_from is not None and model.cfg.drop_rate == 0 else set(range(len(distinct)))
    now = stages(
        [j for j, (_, slots_here, _) in enumerate(rows) if not needed.isdisjoint(slots_here)],
        [j for j, (_, _, m) in enumerate(rests) if m in needed],
    )
    later = stages(
        [j for j, (_, slots_here, _) in enumerate(rows) if needed.isdisjoint(slots_here)],
        [j for j, (_, _, m) in enumerate(rests) if m not in needed],
        LATER_BATCH_TOKENS,
    )
    now, later = _batch_calls(now, later, first_pass, second_pass, [g is not None for _, _, g in rows], progress)
    held = contextlib.ExitStack()  # the packed weights, until the last batch is computed
    with held:
        held.enter_context(packed)
        behind = any(later) and torch.get_num_threads() > 1 and idle_priority_available()
        at_once = now if behind else now + later
        with eval_mode(model):
            if device.type == "cpu":
                run_on_threads(at_once, torch.get_num_threads(), "spamtune-cache-build")
            else:  # a GPU runs one batch at a time, each across the whole device
                for stage in at_once:
                    for batch in stage:
                        batch()
        cache = FrozenPrefixCache(start, states, offsets[slot_of], lengths[slot_of])
        if behind:
            # The background workers never change the model's mode: with dropout off (``needed``
            # covers everything otherwise) the frozen blocks compute the same in either.
            work = IdleWork(later, name="spamtune-prefix-cache", workers=split_threads(torch.get_num_threads())[1])
            work.exit_stack.enter_context(held.pop_all())
            cache.pending, cache.pending_from = work.start(), later_from
    return cache


@dataclass
class BuildProgress:
    """Which batches of a kept cache's build are written: ``done``, those an interrupted build
    wrote (named as the batch plan ``plan`` names them), and ``finished``, those this build
    writes, each added once its states are in the file. ``planned`` is this build's plan and
    ``skipped`` the batches it did not compute again (``build_prefix_cache`` sets both)."""

    done: frozenset[str] = frozenset()
    plan: str | None = None
    finished: list[str] = field(default_factory=list)
    planned: str | None = None
    skipped: int = 0

    def written(self) -> list[str]:
        """Every batch whose states the file holds: what an interrupted build leaves to the next."""
        usable = self.done if self.plan == self.planned else frozenset()
        return sorted(usable | set(self.finished))


def _batch_calls(now, later, first_pass, second_pass, holds_prefix: list[bool], progress: BuildProgress | None):
    """``now`` and ``later`` (stages of batches of indices) as stages of calls, each batch named
    (``now0:3``: phase, pass, place) for ``progress``, which records it once written; the batches
    an earlier build wrote are left out, but for first-pass batches holding shared prefixes while
    a second-pass batch is still to do: the prefixes' keys and values must be computed again."""
    plan = hashlib.sha256(json.dumps([now, later]).encode()).hexdigest()
    done = frozenset()
    if progress is not None:
        progress.planned = plan
        done = progress.done if progress.plan == plan else frozenset()
    named = [(phase, p, f"{phase}{p}:{i}", batch) for phase, stages in (("now", now), ("later", later))
             for p, stage in enumerate(stages) for i, batch in enumerate(stage)]  # fmt: skip
    second_left = any(p == 1 and name not in done for _, p, name, _ in named)

    def call(name: str, p: int, batch: list[int]) -> Callable[[], None]:
        run = functools.partial(first_pass if p == 0 else second_pass, batch)
        if progress is None:
            return run

        def recorded() -> None:
            run()
            progress.finished.append(name)

        return recorded

    def keep(name: str, p: int, batch: list[int]) -> bool:
        return name not in done or (p == 0 and second_left and any(holds_prefix[j] for j in batch))

    calls: dict[str, list[list[Callable[[], None]]]] = {"now": [[], []], "later": [[], []]}
    for phase, p, name, batch in named:
        if keep(name, p, batch):
            calls[phase][p].append(call(name, p, batch))
        elif progress is not None:
            progress.skipped += 1
    return calls["now"], calls["later"]


@dataclass(frozen=True)
class PrefixCacheReport:
    """What ``attach_prefix_caches`` did: blocks cached, for which splits, at what cost."""

    start_block: int  # the frozen blocks whose outputs are cached (0: none)
    splits: tuple[str, ...]
    nbytes: int
    seconds: float
    skipped: str | None = None  # why a split, or every split, runs the plain path
    # "built" in memory; kept under the data root (spamtune.cache_store): "hit", "extended"
    # (from a cache of fewer blocks) or "stored" (built and kept)
    source: str = "built"
    detail: str | None = None  # e.g. "from the 10-block cache", "rebuilt: ... does not match its sha256"
    # Splits whose states were still computed behind training (``seconds`` is the rest's
    # build), and how long the run waited for them at the end, once known.
    background: tuple[str, ...] = ()
    background_wait_s: float | None = None

    def to_dict(self) -> dict:
        record = {
            "blocks": self.start_block, "splits": list(self.splits), "bytes": self.nbytes, "build_s": round(self.seconds, 3),
            "source": self.source,
        }  # fmt: skip
        if self.background:
            record["background"] = list(self.background)
            if self.background_wait_s is not None:
                record["background_wait_s"] = round(self.background_wait_s, 3)
        return record


def attach_prefix_caches(
    model: GPTModel,
    data: TrainingData,
    trainable: Trainable,
    pooling: str,
    precision: Precision,
    *,
    shortcuts: bool = True,
    budget_bytes: int | None = None,
    on_building: Callable[[int], None] | None = None,
    build: Callable[..., FrozenPrefixCache | None] = build_prefix_cache,
    store: PrefixCacheStore | None = None,
    base_sha256: str | None = None,
    test_apart: bool = False,
) -> PrefixCacheReport:
    """Compute the frozen blocks' outputs once for train, validation and test and attach them
    to the splits, as far as memory allows; with a ``store`` (and the ``base_sha256`` of the
    model's base), load them from the data root's kept caches, or build and keep them there
    (memory-mapped: no memory budget applies).

    Exact: with dropout off and the first K blocks frozen, their output for a message is a
    fixed function of its tokens, and causal attention makes it independent of the padding it
    is batched with. Not used for ``last`` pooling, whose pooled position is a padding token
    that the cache does not hold. ``on_building(K)`` is called just before the K blocks run.
    ``build`` computes the cache (``build_prefix_cache``'s arguments): several ranks pass one
    that splits the work among them. ``test_apart``: the test split's own states are batched
    apart and may be finished behind training (``build_prefix_cache``'s ``later_from``; see
    ``test_split_apart``).
    """
    start = cacheable_blocks(model, trainable)
    if not shortcuts:
        return PrefixCacheReport(0, (), 0, 0.0, "not used: the shortcuts are off")
    if pooling == "last":
        return PrefixCacheReport(0, (), 0, 0.0, "not used with last pooling, which reads a padding position the cache does not hold")
    if start == 0:
        return PrefixCacheReport(0, (), 0, 0.0, "not used: every block is trainable")
    # The test split comes last in a cache of every split: its examples start after the others'.
    later_from = len(data.train) + len(data.validation) if test_apart else None
    if store is not None and base_sha256 is not None:
        token_lists = [t for name in paths.SPLITS for t in data.split(name).tokens]
        if on_building:
            on_building(start)
        lookup = store.lookup(model, token_lists, start, base_sha256, precision, later_from)
        cache = lookup.cache
        if cache is not None:
            if precision.device.type != "cpu" and cache.nbytes <= memory_budget_bytes(precision.device):
                # On a GPU, batches are cut from device memory rather than copied over each step.
                cache = FrozenPrefixCache(cache.start_block, cache.states.to(precision.device), cache.offsets, cache.lengths)
            _attach(data, paths.SPLITS, cache)
            source = "stored" if lookup.outcome == "built" else lookup.outcome
            return PrefixCacheReport(start, paths.SPLITS, cache.nbytes, lookup.seconds, None, source, lookup.detail, _background(cache))
    budget = memory_budget_bytes(precision.device) if budget_bytes is None else budget_bytes
    # One cache for all splits, so a message found in several (the SMS data has such leaks)
    # is computed once; when that would not fit, the training split alone, read most often.
    for names in (paths.SPLITS, ("train",)):
        token_lists = [t for name in names for t in data.split(name).tokens]
        need = estimate_cache_bytes(token_lists, model.cfg.emb_dim)
        if need <= budget:
            break
    else:
        return PrefixCacheReport(
            0, (), 0, 0.0, f"not used: the training split needs {need / 2**20:,.0f} MiB, over the {budget / 2**20:,.0f} MiB budget"
        )
    if on_building:
        on_building(start)
    tick = time.perf_counter()
    later = {"later_from": later_from} if later_from is not None and names == paths.SPLITS else {}
    cache = build(model, token_lists, start, precision=precision, budget_bytes=budget, **later)
    if cache is None:  # the device's free memory shrank meanwhile
        return PrefixCacheReport(0, (), 0, 0.0, "not used: out of memory budget")
    _attach(data, names, cache)
    skipped = None if len(names) == len(paths.SPLITS) else "validation and test run the plain path (memory budget)"
    return PrefixCacheReport(start, tuple(names), cache.nbytes, time.perf_counter() - tick, skipped, background=_background(cache))


def _background(cache: FrozenPrefixCache) -> tuple[str, ...]:
    """The splits whose states ``cache`` still computes behind training: the test split, or none."""
    return ("test",) if cache.pending is not None else ()


def test_split_apart(precision: Precision, distributed: bool) -> bool:
    """Whether the test split's cached states are built apart (``build_prefix_cache``'s
    ``later_from``): on a CPU, in one process. There they are finished behind training where
    the build can leave them to workers (several threads and an idle scheduling priority), and
    built at once in the same batches elsewhere, so that the states, and a run's figures, are
    the same whatever the thread count of the run that built them. A GPU builds them in a
    fraction of a second; several ranks share the build."""
    return precision.device.type == "cpu" and not distributed


def computing_behind(data: TrainingData) -> bool:
    """Whether some split's states are still being computed on their background workers."""
    caches = (data.split(name).cache for name in paths.SPLITS)
    return any(cache is not None and cache.pending is not None and cache.pending.running_behind for cache in caches)


def finish_prefix_caches(data: TrainingData) -> float:
    """Wait for any split's states still computed behind training (``test_split_apart``);
    the seconds waited."""
    tick = time.perf_counter()
    for name in paths.SPLITS:
        cache = data.split(name).cache
        if cache is not None:
            cache.finish()
    return time.perf_counter() - tick


def cancel_prefix_caches(data: TrainingData) -> None:
    """Stop the states still computed behind training (a run stopped before it needed them):
    the kept cache's entry is then not completed, and what was written is kept for the next build."""
    for name in paths.SPLITS:
        cache = data.split(name).cache
        if cache is not None and cache.pending is not None:
            cache.pending.cancel()


@torch.no_grad()
def extend_prefix_cache(
    model: GPTModel,
    cache: FrozenPrefixCache,
    blocks: int = 1,
    *,
    batch_size: int = 16,
    precision: Precision | None = None,
    states_out: torch.Tensor | None = None,
) -> FrozenPrefixCache:
    """The cache for ``cache.start_block + blocks`` frozen blocks, by running only the next
    ``blocks`` blocks over the cached states: a cache for K blocks serves K + 1 at the cost of
    one block instead of K + 1.

    Exact as the cache itself is: each block sees a message's own right-padded states under
    causal attention, so padding never reaches the real positions. ``states_out`` as in
    ``build_prefix_cache``; the new cache keeps the old one's offsets and lengths.
    """
    stop = cache.start_block + blocks
    if blocks < 1 or stop > model.cfg.n_layers:
        raise ValueError(f"cannot extend a cache of {cache.start_block} blocks by {blocks} in a {model.cfg.n_layers}-block model")
    states = torch.empty_like(cache.states) if states_out is None else states_out
    if states.shape != cache.states.shape:
        raise ValueError(f"states_out is {tuple(states.shape)}, the cache holds {tuple(cache.states.shape)}")
    # One pass per distinct slot (duplicates share one), in length-sorted batches.
    slots = sorted({(int(o), int(n)) for o, n in zip(cache.offsets, cache.lengths)})
    offsets, lengths = torch.tensor(slots, dtype=torch.long).reshape(-1, 2).unbind(1)
    distinct = FrozenPrefixCache(cache.start_block, cache.states, offsets, lengths)
    precision = precision or Precision("fp32", "cpu")
    in_memory = 0 if states_out is not None else states.numel() * states.element_size()
    spare = memory_budget_bytes(precision.device) - in_memory
    with eval_mode(model), packed_frozen_weights(model.trf_blocks[cache.start_block : stop], precision, spare):
        for idx in sorted_batches([n for _, n in slots], batch_size):
            rows = [slots[i] for i in idx]
            x, _ = distinct.batch(idx, precision.device)
            with precision.forward_context():
                for block in model.trf_blocks[cache.start_block : stop]:
                    x = block(x)
            for row, (o, n) in enumerate(rows):
                states[o : o + n] = x[row, :n].to(states.dtype)
    return FrozenPrefixCache(stop, states, cache.offsets, cache.lengths)


def packed_frozen_weights(blocks, precision: Precision, spare_bytes: int) -> contextlib.AbstractContextManager:
    """The frozen ``blocks``' Linear weights packed for oneDNN while a cache is built over them
    (``spamtune.linear.packed_weights``), if the copies fit in ``spare_bytes``: gpt2-small's
    frozen blocks take 340 MB in fp32, 170 MB in bf16; a larger model may go without."""
    layers = [m for block in blocks for m in block.modules() if type(m) is nn.Linear]
    dtype = packing_dtype(precision.device, precision.dtype)
    if dtype is not None and sum(m.weight.numel() for m in layers) * dtype.itemsize > spare_bytes:
        dtype = None
    return packed_weights(layers, dtype)


def _attach(data: TrainingData, names: tuple[str, ...], cache: FrozenPrefixCache) -> None:
    """Give each split its part of a cache built over ``names`` in that order."""
    offset = 0
    for name in names:
        examples = data.split(name)
        examples.cache = cache.subset(offset, offset + len(examples))
        offset += len(examples)
