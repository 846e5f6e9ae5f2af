"""The frozen-prefix cache kept on disk, so that a second run on the same data and base skips
the build (two thirds of the book's recipe in fp32).

An entry lives in ``<data root>/cache/<name>/``, its name derived from everything the cached
states depend on (``CacheKey``): the base weights' sha256, the tokenised messages' fingerprint,
the number of frozen blocks, the storage dtype, the precision the blocks ran under, and the
version of this format. Change any of them and the entry is simply another one.

Files of an entry:

* ``states.bin``: the states, raw, ``[rows, emb_dim]`` in the key's dtype (little-endian),
  memory-mapped on load, so a cache larger than the RAM (gpt2-xl, big mailboxes) works and
  loading reads nothing until a batch touches it;
* ``index.safetensors``: each message's ``offsets`` and ``lengths`` in the states;
* ``meta.json``: the key, shapes, sizes and the sha256 of both files. Written last, it marks
  the entry complete; the other two are written to temporary names and renamed.

A build stopped by Ctrl-C (in the build, or while the test split's states were computed behind
training) leaves ``states.partial``, the states written so far, and ``progress.json``, the key
and the batches that wrote them; the next build of that key takes the file over and computes
only the other batches (``prefix_cache.BuildProgress``). A file that does not fit its ledger is
removed and the build starts over; a crash that writes no ledger leaves nothing to resume.

On load the sizes and hashes are checked; an entry that fails is removed and rebuilt. A cache
for K blocks is also the start of one for K + 1 (``extend_prefix_cache``). A process writing an
entry holds a lock on its folder until it is complete (``folder_lock``); ``cache_catalog``
lists and removes entries.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from spamtune import __version__, paths
from spamtune.cache_entry import CACHE_FORMAT, INDEX_FILE, META_FILE, META_KIND, NAME_LENGTH, PARTIAL_STATES_FILE, PROGRESS_FILE
from spamtune.cache_entry import PROGRESS_KIND, STATES_FILE, VERIFIED_FILE
from spamtune.cache_entry import CacheCorrupt, CacheMissing, files_out_of_shape, interrupted_build, read_meta, remove_folder
from spamtune.download import sha256_file
from spamtune.errors import DiskFull, SpamtuneError, SpamtuneUsageError
from spamtune.fsutil import atomic_path, atomic_write_bytes, atomic_write_json, creation_failure, remove_stale_temporaries
from spamtune.model import GPTModel
from spamtune.device import Precision
from spamtune.folder_lock import held_for_writing, unclaimed
from spamtune.idle_work import WorkCancelled
from spamtune.interrupts import interrupts_deferred
from spamtune.prefix_cache import BuildProgress, FrozenPrefixCache, build_prefix_cache, distinct_token_count, extend_prefix_cache
from spamtune.verified import VerifiedFiles, file_signature

# Room left on the disk beyond the entry itself, so a cache never fills it up.
DISK_MARGIN_BYTES = 256 << 20

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------- keys


def tokens_fingerprint(token_lists: Iterable[list[int]]) -> str:
    """sha256 of the tokenised messages, in order (lengths, then every token as int64 LE)."""
    token_lists = list(token_lists)
    lengths = np.fromiter(map(len, token_lists), dtype="<i8", count=len(token_lists))
    flat = np.fromiter(itertools.chain.from_iterable(token_lists), dtype="<i8", count=int(lengths.sum()))
    digest = hashlib.sha256(b"spamtune-tokens/1\0")
    digest.update(lengths.tobytes())
    digest.update(flat.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Everything the cached states are a function of."""

    base_sha256: str
    tokens_sha256: str
    blocks: int
    dtype: str = "float32"
    precision: str = "fp32"  # the autocast the blocks ran under: bf16 states differ from fp32 ones
    format: int = CACHE_FORMAT

    @classmethod
    def for_tokens(cls, base_sha256: str, token_lists: Iterable[list[int]], blocks: int, **kwargs) -> CacheKey:
        return cls(base_sha256, tokens_fingerprint(token_lists), blocks, **kwargs)

    @property
    def name(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:NAME_LENGTH]

    @property
    def torch_dtype(self) -> torch.dtype:
        try:
            return _DTYPES[self.dtype]
        except KeyError:
            raise SpamtuneUsageError(f"a prefix cache cannot be stored as {self.dtype}; use one of: {', '.join(_DTYPES)}") from None

    def with_blocks(self, blocks: int) -> CacheKey:
        return replace(self, blocks=blocks)


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class CacheLookup:
    """What ``PrefixCacheStore.obtain`` did."""

    cache: FrozenPrefixCache | None
    outcome: str  # "hit", "extended", "built", or "unavailable" (no room: the caller builds in memory)
    path: Path | None
    seconds: float
    detail: str | None = None  # e.g. "from the 2-block cache", "rebuilt: states.bin has 10 bytes, expected 12"


class PrefixCacheStore:
    """The caches under one data root."""

    def __init__(self, data_root: str | Path):
        self.root = paths.cache_dir(Path(data_root))

    def entry_dir(self, key: CacheKey) -> Path:
        return self.root / key.name

    # ---- reading
    def load(self, key: CacheKey, verify: str = "hash", emb_dim: int | None = None) -> FrozenPrefixCache:
        """The entry of ``key``, memory-mapped. Raises ``CacheMissing`` or ``CacheCorrupt`` (a
        symbolic link planted in the entry's place is corrupt too: a cache is disposable, and
        reading a folder elsewhere through it would also write its ``VERIFIED_FILE`` there).

        ``emb_dim``: the width of the caller's model; an entry whose ``meta.json`` gives another
        is corrupt. Its hashes cover the files, not meta.json itself: rows and width traded for
        the same byte count would map the states in another shape. (The rows then follow from
        the file's size, checked below.)

        ``verify="hash"`` (the default) re-hashes both files, reading the states once from the
        disk, unless the states file matched before and is untouched since (``VERIFIED_FILE``);
        ``"size"`` checks only the sizes, for caches too large to read at every run.
        """
        entry = self.entry_dir(key)
        if entry.is_symlink():  # never read or written through: ``obtain`` replaces the link itself
            raise CacheCorrupt(f"{entry} is a symbolic link, not an entry folder (the link is replaced, what it points to left alone)")
        meta_path = entry / META_FILE
        meta = read_meta(entry)
        try:
            if meta.get("kind") != META_KIND or meta.get("key") != asdict(key):
                raise CacheCorrupt(f"{meta_path} describes another cache")
            rows, width, nbytes = int(meta["rows"]), int(meta["emb_dim"]), int(meta["states_bytes"])
            states_sha, index_sha = meta["states_sha256"], meta["index_sha256"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CacheCorrupt(f"{meta_path} is unreadable ({exc})") from None
        states_path, index_path = entry / STATES_FILE, entry / INDEX_FILE
        if emb_dim is not None and width != emb_dim:
            raise CacheCorrupt(f"{meta_path} gives states {width} wide, expected {emb_dim} for this model")
        if rows < 1 or width < 1:
            raise CacheCorrupt(f"{meta_path} gives {rows:,} rows of {width}")
        problem = files_out_of_shape(entry, nbytes)
        if problem is not None:
            raise CacheCorrupt(problem)
        expected = rows * width * torch.empty((), dtype=key.torch_dtype).element_size()
        if nbytes != expected:
            raise CacheCorrupt(f"{states_path} has {nbytes:,} bytes, expected {expected:,} for {rows:,} rows of {width}")
        if sha256_file(index_path) != index_sha:
            raise CacheCorrupt(f"{index_path} does not match its sha256")
        if verify == "hash":
            hashed_before, signature = VerifiedFiles(entry / VERIFIED_FILE), file_signature(states_path)
            if not hashed_before.known(states_sha, signature):
                if sha256_file(states_path) != states_sha:
                    raise CacheCorrupt(f"{states_path} does not match its sha256")
                hashed_before.remember(states_sha, signature)
        try:
            with interrupts_deferred():  # safetensors would turn a Ctrl-C in the read into a ValueError
                index = load_file(str(index_path))
            offsets, lengths = index["offsets"], index["lengths"]
        except (SafetensorError, OSError, KeyError) as exc:
            raise CacheCorrupt(f"{index_path} is unreadable ({exc})") from None
        if len(offsets) != len(lengths) or (len(offsets) and int((offsets + lengths).max()) > rows):
            raise CacheCorrupt(f"{index_path} points outside the states")
        states = _map_states(states_path, nbytes, key.torch_dtype, rows, width)
        return FrozenPrefixCache(key.blocks, states, offsets, lengths)

    # ---- writing
    def _write(
        self, key: CacheKey, rows: int, emb_dim: int, fill: Callable[[torch.Tensor, BuildProgress], FrozenPrefixCache]
    ) -> FrozenPrefixCache | None:
        """Create the entry of ``key``: ``fill`` writes the states into a memory-mapped temporary
        file (an interrupted build's, if it left one that fits, with what it wrote in the
        ``BuildProgress`` it gets) and returns the cache; None when the disk lacks the room
        (nothing is written).

        A cache that ``fill`` returns with states still ``pending`` (computed behind training)
        is returned as it is, on the temporary file; the entry is completed when that work
        finishes; if the work is cancelled, what it wrote is kept for the next build (``_entry_written``).
        """
        dtype = key.torch_dtype
        nbytes = rows * emb_dim * torch.empty((), dtype=dtype).element_size()
        if nbytes == 0:
            return None
        entry = self.entry_dir(key)
        writing = contextlib.ExitStack()
        try:
            with unclaimed(entry) as free:  # no process writes it: a killed writer's file can go
                if free:
                    remove_stale_temporaries(entry)
            writing.enter_context(held_for_writing(entry))
            progress = _interrupted_build(entry, key, nbytes)
            if shutil.disk_usage(entry).free < (0 if progress.done else nbytes) + DISK_MARGIN_BYTES:
                writing.close()
                return None
            (entry / META_FILE).unlink(missing_ok=True)  # the entry is incomplete until meta.json is back
        except OSError as exc:
            writing.close()
            raise SpamtuneError(f"cannot write the prefix cache {entry}: {creation_failure(entry, exc)}") from None
        try:
            states, filled = writing.enter_context(_entry_written(key, entry, rows, emb_dim, nbytes, progress))
        except DiskFull:  # the room went between the check above and the reservation
            writing.close()
            return None
        try:
            cache = fill(states, progress)
        except BaseException as exc:
            writing.__exit__(type(exc), exc, exc.__traceback__)
            raise
        filled.append(cache)
        if cache.pending is not None:
            cache.pending.exit_stack.enter_context(writing)
            return cache
        writing.close()
        return FrozenPrefixCache(key.blocks, _map_states(entry / STATES_FILE, nbytes, dtype, rows, emb_dim), cache.offsets, cache.lengths)

    def lookup(
        self,
        model: GPTModel,
        token_lists: list[list[int]],
        blocks: int,
        base_sha256: str,
        precision: Precision,
        later_from: int | None = None,
    ) -> CacheLookup:
        """``obtain`` for the fp32 states of the first ``blocks`` blocks of ``model`` (built from the
        base ``base_sha256``) over ``token_lists``, computed in ``precision``."""
        key = CacheKey.for_tokens(base_sha256, token_lists, blocks, precision=precision.name)
        return self.obtain(key, model, token_lists, precision=precision, later_from=later_from)

    def obtain(
        self,
        key: CacheKey,
        model: GPTModel,
        token_lists: list[list[int]],
        *,
        precision: Precision | None = None,
        verify: str = "hash",
        later_from: int | None = None,
    ) -> CacheLookup:
        """The cache of ``key`` for ``token_lists``: loaded if stored; else, in fp32, extended from a
        stored cache of fewer blocks (same base, data and dtype); else built; each new one is
        stored. A corrupt or stale entry met on the way is removed and rebuilt. A build may
        leave the examples from ``later_from`` on to finish behind training
        (``build_prefix_cache``); the entry is then complete once they are.

        ``key`` must name what the model caches: its first ``key.blocks`` blocks (frozen), the
        fingerprint of ``token_lists``, the base the model was built from and ``precision``'s name.
        """
        precision = precision or Precision("fp32", "cpu")
        if key.blocks < 1 or key.precision != precision.name:
            raise ValueError(f"a cache key for {key.blocks} blocks in {key.precision} does not fit a {precision.name} computation")
        tick = time.perf_counter()
        problems: list[str] = []

        def attempt(k: CacheKey) -> FrozenPrefixCache | None:
            try:
                return self.load(k, verify, emb_dim=model.cfg.emb_dim)
            except CacheMissing:
                return None
            except CacheCorrupt as exc:
                problems.append(str(exc))
                with contextlib.suppress(OSError):  # a folder that cannot be changed fails the write, with its reason
                    remove_folder(self.entry_dir(k))
                return None

        def done(cache, outcome, detail=None) -> CacheLookup:
            if problems:
                detail = "; ".join([f"rebuilt: {p}" for p in problems] + ([detail] if detail else []))
            path = self.entry_dir(key) if cache is not None else None
            return CacheLookup(cache, outcome if cache is not None else "unavailable", path, time.perf_counter() - tick, detail)

        found = attempt(key)
        if found is not None:
            return done(found, "hit")
        rows, emb_dim = distinct_token_count(token_lists), model.cfg.emb_dim
        # Extending runs the next blocks over each message on its own, where a build shares the
        # prefixes messages have in common: other products, equal to float rounding. In fp32 that
        # is ~1e-7 of a loss; bf16 rounds every product to 8 bits, and an extended cache moved a
        # tiny run's validation loss by 1e-4, so a bf16 run's figures would depend on which
        # caches earlier runs left. bf16 builds.
        extendable = range(key.blocks - 1, 0, -1) if precision.name == "fp32" else ()
        for fewer in extendable:
            start = attempt(key.with_blocks(fewer))
            if start is None:
                continue
            cache = self._write(key, rows, emb_dim, lambda out, _: extend_prefix_cache(
                model, start, key.blocks - fewer, precision=precision, states_out=out,
            ))  # fmt: skip
            return done(cache, "extended", f"from the {fewer}-block cache")
        resumed: list[BuildProgress] = []

        def build(out: torch.Tensor, progress: BuildProgress) -> FrozenPrefixCache:
            resumed.append(progress)
            return build_prefix_cache(
                model, token_lists, key.blocks, precision=precision, dtype=key.torch_dtype, states_out=out,
                later_from=later_from, progress=progress,
            )  # fmt: skip

        cache = self._write(key, rows, emb_dim, build)
        skipped = resumed[0].skipped if resumed else 0
        return done(cache, "built", f"resumed an interrupted build: {skipped:,} batches were written already" if skipped else None)


def _interrupted_build(entry: Path, key: CacheKey, nbytes: int) -> BuildProgress:
    """What an interrupted build of ``key`` left in ``entry`` to resume (its ledger, if its file is
    there, regular and of the entry's size), else a fresh start, with any leftovers removed."""
    record = interrupted_build(entry)
    if record is not None and record["key"] == asdict(key) and record["states_bytes"] == nbytes:
        return BuildProgress(frozenset(record["written"]), record["plan"])
    for leftover in (entry / PROGRESS_FILE, entry / PARTIAL_STATES_FILE):
        with contextlib.suppress(OSError):
            leftover.unlink()
    return BuildProgress()


def _keep_for_resuming(entry: Path, key: CacheKey, tmp: Path, mapped: np.memmap, nbytes: int, progress: BuildProgress) -> None:
    """An interrupted build's states, under ``PARTIAL_STATES_FILE``, and its ledger, for the next build."""
    written = progress.written()
    if progress.planned is None or not written:
        return  # nothing a next build could skip
    mapped.flush()
    os.replace(tmp, entry / PARTIAL_STATES_FILE)
    record = {"kind": PROGRESS_KIND, "key": asdict(key), "states_bytes": nbytes, "plan": progress.planned, "written": written}
    atomic_write_json(entry / PROGRESS_FILE, record)


@contextlib.contextmanager
def _entry_written(
    key: CacheKey, entry: Path, rows: int, emb_dim: int, nbytes: int, progress: BuildProgress
) -> Iterator[tuple[torch.Tensor, list]]:
    """The entry's states file, memory-mapped under a temporary name (an interrupted build's,
    taken over, where ``progress`` has what it wrote), and a list for the cache made on it.
    Leaving normally completes the entry: the states are hashed and renamed, then the index and
    ``meta.json`` (last: it marks the entry complete) are written. Leaving on Ctrl-C (or the
    background work cancelled) keeps what was written for the next build; on any other error the
    temporary file is removed."""
    filled: list[FrozenPrefixCache] = []
    with atomic_path(entry / STATES_FILE) as tmp:
        if progress.done:
            os.replace(entry / PARTIAL_STATES_FILE, tmp)
            (entry / PROGRESS_FILE).unlink()
        else:
            os.truncate(tmp, nbytes)
            _reserve(tmp, nbytes)
        mapped = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(nbytes,))
        try:
            yield torch.from_numpy(mapped).view(key.torch_dtype).view(rows, emb_dim), filled
        except (KeyboardInterrupt, WorkCancelled):
            with contextlib.suppress(OSError):  # a folder that cannot be written: the next build starts over
                _keep_for_resuming(entry, key, tmp, mapped, nbytes, progress)
            raise
        mapped.flush()
        states_sha = sha256_file(tmp)
    VerifiedFiles(entry / VERIFIED_FILE).remember_written(states_sha, entry / STATES_FILE)
    cache = filled[0]
    # Serialised here and written as bytes: safetensors' own save_file reports a full disk as a
    # SafetensorError, which would be no one-line error.
    index = save({"offsets": cache.offsets.contiguous(), "lengths": cache.lengths.contiguous()})
    atomic_write_bytes(entry / INDEX_FILE, index)
    index_sha = hashlib.sha256(index).hexdigest()
    meta = {
        "kind": META_KIND,
        "key": asdict(key),
        "rows": rows,
        "emb_dim": emb_dim,
        "examples": len(cache),
        "states_bytes": nbytes,
        "states_sha256": states_sha,
        "index_sha256": index_sha,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spamtune_version": __version__,
    }
    atomic_write_json(entry / META_FILE, meta)


def _reserve(path: Path, nbytes: int) -> None:
    """Allocate the disk blocks of ``path``'s first ``nbytes`` now. The states are written
    through a memory map of a sparse file: a disk that fills meanwhile (another process writing)
    would otherwise kill the process with SIGBUS at the first page that finds no room, where
    this raises ENOSPC. Skipped where the file system cannot allocate ahead."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _map_states(path: Path, nbytes: int, dtype: torch.dtype, rows: int, emb_dim: int) -> torch.Tensor:
    """The states file as a tensor backed by the file's pages: nothing is read until used.

    Copy-on-write ("c") rather than read-only: torch wants a writable array, and a write (none
    is made) would go to a private page, never to the shared cache file.
    """
    mapped = np.memmap(path, dtype=np.uint8, mode="c", shape=(nbytes,))
    return torch.from_numpy(mapped).view(dtype).view(rows, emb_dim)


