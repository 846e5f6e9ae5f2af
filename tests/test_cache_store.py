"""The frozen-prefix cache on disk: hits, memory mapping, corruption, K -> K+1, ls/rm."""

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import spamtune_without_torch
from typer.testing import CliRunner

from spamtune import cache_catalog, cache_store, folder_lock, idle_work, prefix_cache
from spamtune.cache_catalog import list_caches, remove_caches
from spamtune.cache_entry import CACHE_FORMAT, INDEX_FILE, META_FILE, STATES_FILE, VERIFIED_FILE
from spamtune.cache_store import CacheKey, PrefixCacheStore
from spamtune.bases import base_weights_sha256
from spamtune.cli import app
from spamtune.data import pad_batch
from spamtune.device import Precision
from spamtune.errors import DiskFull, SpamtuneError, SpamtuneUsageError
from spamtune.model import GPTConfig, GPTModel, convert_to_classifier
from spamtune.prefix_cache import build_prefix_cache, extend_prefix_cache

CFG = GPTConfig(vocab_size=50257, context_length=64, emb_dim=48, n_layers=4, n_heads=4)
gen = torch.Generator().manual_seed(1)
SEQS = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in (1, 5, 17, 40, 9, 3)]
SEQS += [SEQS[2], SEQS[3][:14] + [7, 8, 9]]  # a duplicate, and a message sharing a long prefix


def classifier(trainable: str) -> GPTModel:
    """The same random base every time, with the given preset trainable."""
    torch.manual_seed(0)
    return convert_to_classifier(GPTModel(CFG), trainable=trainable).eval()


def key_for(model: GPTModel, blocks: int, seqs=SEQS, **kwargs) -> CacheKey:
    return CacheKey.for_tokens(base_weights_sha256(model), seqs, blocks, **kwargs)


def plain_logits(model, seqs):
    ids, lengths = pad_batch(seqs, 50256)
    with torch.no_grad():
        return model.classify(ids, lengths, "last-real", last_query_only=False)


def cached_logits(model, cache):
    prefix, lengths = cache.batch(list(range(len(cache))), "cpu")
    with torch.no_grad():
        return model.classify(None, lengths, "last-real", prefix=prefix, start_block=cache.start_block)


def test_key_depends_on_every_input():
    base = CacheKey.for_tokens("a" * 64, SEQS, 2)
    assert base == CacheKey.for_tokens("a" * 64, [list(s) for s in SEQS], 2)
    others = [
        CacheKey.for_tokens("b" * 64, SEQS, 2),
        CacheKey.for_tokens("a" * 64, SEQS[::-1], 2),
        CacheKey.for_tokens("a" * 64, [SEQS[0] + SEQS[1]] + SEQS[2:], 2),  # same tokens, other split into messages
        base.with_blocks(3),
        CacheKey.for_tokens("a" * 64, SEQS, 2, dtype="bfloat16"),
        CacheKey.for_tokens("a" * 64, SEQS, 2, precision="bf16"),
        CacheKey.for_tokens("a" * 64, SEQS, 2, format=CACHE_FORMAT + 1),
    ]
    assert len({base.name, *(k.name for k in others)}) == len(others) + 1


def test_base_hash_ignores_head_and_follows_the_weights():
    a, b = classifier("last-block"), classifier("last-2-blocks")
    assert base_weights_sha256(a) == base_weights_sha256(b)
    with torch.no_grad():
        b.trf_blocks[0].norm1.weight[0] += 1e-3
    assert base_weights_sha256(a) != base_weights_sha256(b)


def test_second_lookup_hits_the_same_states_memory_mapped(tmp_path):
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    first = store.obtain(key, model, SEQS)
    assert first.outcome == "built" and first.detail is None
    second = store.obtain(key, model, SEQS)
    assert second.outcome == "hit" and second.path == tmp_path / "cache" / key.name
    assert torch.equal(second.cache.states, first.cache.states)
    assert torch.equal(second.cache.offsets, first.cache.offsets) and torch.equal(second.cache.lengths, first.cache.lengths)
    # Same states as a cache built in memory, and the same logits as the plain forward.
    in_memory = build_prefix_cache(model, SEQS, 2)
    assert torch.equal(second.cache.states, in_memory.states)
    torch.testing.assert_close(cached_logits(model, second.cache), plain_logits(model, SEQS), atol=1e-5, rtol=1e-5)
    # Memory-mapped, not read into memory: a change to the file shows through an untouched page.
    loaded = store.load(key, verify="size")
    path = second.path / STATES_FILE
    raw = bytearray(path.read_bytes())
    raw[:4] = torch.tensor([1234.5]).numpy().tobytes()
    path.write_bytes(bytes(raw))  # in place: same inode
    assert loaded.states[0, 0].item() == 1234.5


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta", "index"])
def test_corrupt_entries_are_detected_and_rebuilt(tmp_path, damage):
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    good = store.obtain(key, model, SEQS).cache.states.clone()
    entry = tmp_path / "cache" / key.name
    if damage == "flip":
        raw = bytearray((entry / STATES_FILE).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (entry / STATES_FILE).write_bytes(bytes(raw))
    elif damage == "truncate":
        (entry / STATES_FILE).write_bytes((entry / STATES_FILE).read_bytes()[:-4])
    elif damage == "meta":
        (entry / META_FILE).write_text("{not json")
    else:
        (entry / "index.safetensors").write_bytes(b"\0" * 16)
    again = store.obtain(key, model, SEQS)
    assert again.outcome == "built" and again.detail.startswith("rebuilt: ")
    assert torch.equal(again.cache.states, good)
    assert store.obtain(key, model, SEQS).outcome == "hit"


@pytest.mark.parametrize("rows_times", [2, -1])
def test_a_meta_json_giving_another_shape_of_the_same_bytes_is_rebuilt_not_mapped_so(tmp_path, rows_times):
    # The hashes in meta.json cover the files, not meta.json: rows and width traded for the same
    # byte count (or both negated) pass every size and hash check, and the states mapped so made
    # the run's next block fail on the width.
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    good = store.obtain(key, model, SEQS).cache.states.clone()
    meta_path = tmp_path / "cache" / key.name / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["rows"], meta["emb_dim"] = meta["rows"] * rows_times, meta["emb_dim"] // rows_times
    meta_path.write_text(json.dumps(meta))
    again = store.obtain(key, model, SEQS)
    assert again.outcome == "built" and f"expected {CFG.emb_dim} for this model" in again.detail
    assert torch.equal(again.cache.states, good)
    assert store.obtain(key, model, SEQS).outcome == "hit"


def test_a_hit_hashes_the_states_once_until_the_file_changes(tmp_path, monkeypatch):
    from spamtune import cache_store, verified

    monkeypatch.setattr(verified, "SETTLED_NS", 0)  # the file was written just now
    hashed: list[str] = []
    real = cache_store.sha256_file
    monkeypatch.setattr(cache_store, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    good = store.obtain(key, model, SEQS).cache.states.clone()
    hashed.clear()
    assert store.obtain(key, model, SEQS).outcome == "hit" and STATES_FILE not in hashed  # hashed as it was written
    # An entry the index does not know (copied from elsewhere): checked, then remembered.
    (tmp_path / "cache" / key.name / VERIFIED_FILE).unlink()
    assert store.obtain(key, model, SEQS).outcome == "hit" and STATES_FILE in hashed
    hashed.clear()
    assert store.obtain(key, model, SEQS).outcome == "hit" and STATES_FILE not in hashed
    # One byte flipped in place (same inode and size): a new change time, so hashed and rebuilt.
    time.sleep(0.05)  # past the file system's clock tick of the first write (SETTLED_NS is off)
    path = tmp_path / "cache" / key.name / STATES_FILE
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    again = store.obtain(key, model, SEQS)
    assert again.outcome == "built" and "does not match its sha256" in again.detail
    assert torch.equal(again.cache.states, good)


def test_an_interrupted_write_leaves_no_usable_entry(tmp_path):
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("spamtune.cache_store.build_prefix_cache", boom)
        with pytest.raises(KeyboardInterrupt):
            store.obtain(key, model, SEQS)
    assert not (tmp_path / "cache" / key.name).exists()  # no folder left for `cache ls` to show forever
    assert list_caches(tmp_path) == []
    assert store.obtain(key, model, SEQS).outcome == "built"


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate here")
def test_a_disk_that_fills_before_the_states_are_written_leaves_the_build_in_memory(tmp_path, monkeypatch):
    # The states are written through a memory map: a page finding no room on the disk would
    # be a SIGBUS, so the room is taken first, and a disk that filled since the check is
    # the same as one that lacked the room from the start.
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    lookup = store.obtain(key, model, SEQS)
    assert lookup.outcome == "unavailable" and lookup.cache is None
    assert not (tmp_path / "cache" / key.name).exists()
    monkeypatch.undo()
    assert store.obtain(key, model, SEQS).outcome == "built"


def test_a_disk_full_as_the_index_is_written_is_the_one_line_disk_full_error(tmp_path, monkeypatch):
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    write_bytes = Path.write_bytes

    def full_for_the_index(path, data):
        if INDEX_FILE in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_for_the_index)
    with pytest.raises(DiskFull):
        store.obtain(key, model, SEQS)
    monkeypatch.undo()
    entry = tmp_path / "cache" / key.name
    assert not (entry / META_FILE).exists() and not list(entry.glob(".*.part"))
    assert store.obtain(key, model, SEQS).outcome == "built"


def test_a_cache_of_k_blocks_serves_k_plus_one_exactly(tmp_path):
    store = PrefixCacheStore(tmp_path)
    one = classifier("last-3-blocks")  # caches block 0
    assert store.obtain(key_for(one, 1), one, SEQS).outcome == "built"
    two = classifier("last-2-blocks")  # caches blocks 0-1
    lookup = store.obtain(key_for(two, 2), two, SEQS)
    assert lookup.outcome == "extended" and lookup.detail == "from the 1-block cache"
    fresh = build_prefix_cache(two, SEQS, 2)
    torch.testing.assert_close(lookup.cache.states, fresh.states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached_logits(two, lookup.cache), plain_logits(two, SEQS), atol=1e-5, rtol=1e-5)
    assert store.obtain(key_for(two, 2), two, SEQS).outcome == "hit"
    # In memory, and by several blocks at once.
    three = classifier("last-block")
    extended = extend_prefix_cache(three, build_prefix_cache(one, SEQS, 1), blocks=2, batch_size=3)
    assert extended.start_block == 3
    torch.testing.assert_close(extended.states, build_prefix_cache(three, SEQS, 3).states, atol=1e-5, rtol=1e-5)


def test_a_bf16_cache_is_built_not_extended_so_it_is_the_same_whatever_came_before(tmp_path):
    bf16 = Precision("bf16", "cpu")
    one, two = classifier("last-3-blocks"), classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path / "after-a-1-block-cache")
    store.obtain(key_for(one, 1, precision="bf16"), one, SEQS, precision=bf16)
    lookup = store.obtain(key_for(two, 2, precision="bf16"), two, SEQS, precision=bf16)
    assert lookup.outcome == "built"
    cold = PrefixCacheStore(tmp_path / "cold").obtain(key_for(two, 2, precision="bf16"), two, SEQS, precision=bf16)
    assert torch.equal(lookup.cache.states, cold.cache.states)


def test_a_cache_of_other_data_or_base_is_not_used(tmp_path):
    store = PrefixCacheStore(tmp_path)
    model = classifier("last-2-blocks")
    store.obtain(key_for(model, 2), model, SEQS)
    assert store.obtain(key_for(model, 2, SEQS[:-1]), model, SEQS[:-1]).outcome == "built"
    other = classifier("last-2-blocks")
    with torch.no_grad():
        other.tok_emb.weight[SEQS[0][0]] += 1.0
    assert store.obtain(key_for(other, 2), other, SEQS).outcome == "built"
    with pytest.raises(ValueError, match="does not fit a bf16 computation"):
        store.obtain(key_for(model, 2), model, SEQS, precision=Precision("bf16", "cpu"))


def test_list_and_remove_with_sizes(tmp_path):
    store = PrefixCacheStore(tmp_path)
    one, two = classifier("last-3-blocks"), classifier("last-2-blocks")
    store.obtain(key_for(one, 1), one, SEQS)
    store.obtain(key_for(two, 2), two, SEQS)
    entries = list_caches(tmp_path)
    assert len(entries) == 2 and {e.status for e in entries} == {"ok"}
    for e in entries:
        assert e.nbytes == sum(p.stat().st_size for p in e.path.iterdir())
        assert e.nbytes > len({tuple(s) for s in SEQS}) * 48 * 4  # states plus index and meta
    # An entry of an older format is listed as stale.
    meta = json.loads((entries[0].path / META_FILE).read_text())
    meta["key"]["format"] = CACHE_FORMAT - 1
    (entries[0].path / META_FILE).write_text(json.dumps(meta))
    assert sorted(e.status for e in list_caches(tmp_path)) == ["ok", "stale"]
    with pytest.raises(SpamtuneError, match="no prefix cache named 'zzz'"):
        remove_caches(tmp_path, ["zzz"])
    if entries[0].name[0] == entries[1].name[0]:
        with pytest.raises(SpamtuneUsageError, match="names 2 prefix caches"):
            remove_caches(tmp_path, [entries[0].name[0]])
    size = {e.name: e.nbytes for e in list_caches(tmp_path)}[entries[0].name]  # meta.json rewritten
    removal = remove_caches(tmp_path, [entries[0].name[:6]])
    assert [e.name for e in removal.removed] == [entries[0].name] and not entries[0].path.exists()
    assert removal.freed == size and removal.failed == [] and removal.error() is None
    assert [e.name for e in list_caches(tmp_path)] == [entries[1].name]
    assert remove_caches(tmp_path, everything=True).removed[0].name == entries[1].name and list_caches(tmp_path) == []


def test_cache_ls_and_rm_answer_without_importing_torch(tmp_path):
    """Listing and removing read the entries' folders alone: no PyTorch import (seconds on a
    cold start, most of what `cache ls` took)."""
    store = PrefixCacheStore(tmp_path)
    one, two = classifier("last-3-blocks"), classifier("last-2-blocks")
    store.obtain(key_for(one, 1), one, SEQS)
    store.obtain(key_for(two, 2), two, SEQS)
    stale = list_caches(tmp_path)[0]
    meta = json.loads((stale.path / META_FILE).read_text())
    meta["key"]["format"] = CACHE_FORMAT - 1
    (stale.path / META_FILE).write_text(json.dumps(meta))
    listed = spamtune_without_torch("cache", "ls", "--format", "json", "--data-dir", str(tmp_path))
    assert sorted(json.loads(line)["status"] for line in listed.stdout.splitlines()) == ["ok", "stale"]  # one JSON object a line
    spamtune_without_torch("cache", "rm", "--stale", "--data-dir", str(tmp_path))
    assert [e.status for e in list_caches(tmp_path)] == ["ok"] and not stale.path.exists()


def test_remove_never_follows_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "abc").symlink_to(victim)
    assert list_caches(tmp_path) == []  # not an entry
    with pytest.raises(SpamtuneError):
        remove_caches(tmp_path, ["abc"])
    assert (victim / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("target", ["copy of the entry", "other folder", "nothing"])
def test_an_entry_replaced_by_a_symlink_is_rebuilt_in_place_of_the_link_never_through_it(tmp_path, target):
    """A cache is disposable: a link planted where an entry goes is replaced by a fresh entry,
    never read or written through, and what it points to is left exactly as it was."""
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    good = store.obtain(key, model, SEQS).cache.states.clone()
    entry = store.entry_dir(key)
    elsewhere = tmp_path / "elsewhere"
    if target == "copy of the entry":  # a hit through the link would write its verified.json there
        shutil.copytree(entry, elsewhere)
        (elsewhere / VERIFIED_FILE).unlink()
    elif target == "other folder":
        elsewhere.mkdir()
        (elsewhere / "keep.txt").write_text("precious")
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()} if elsewhere.exists() else None
    shutil.rmtree(entry)
    entry.symlink_to(elsewhere, target_is_directory=True)
    again = store.obtain(key, model, SEQS)
    assert again.outcome == "built" and again.detail == (
        f"rebuilt: {entry} is a symbolic link, not an entry folder (the link is replaced, what it points to left alone)"
    )
    assert torch.equal(again.cache.states, good)
    assert not entry.is_symlink() and entry.is_dir() and (entry / META_FILE).is_file()
    assert ({p.name: p.read_bytes() for p in elsewhere.iterdir()} if elsewhere.exists() else None) == before
    assert store.obtain(key, model, SEQS).outcome == "hit"


def test_cli_ls_writes_an_escape_sequence_in_a_hand_edited_meta_as_an_escape(tmp_path):
    """A string field of meta.json went to the listing as it was, escape sequence and all."""
    store = PrefixCacheStore(tmp_path)
    model = classifier("last-2-blocks")
    key = key_for(model, 2)
    store.obtain(key, model, SEQS)
    [entry] = list_caches(tmp_path)
    meta = json.loads((entry.path / META_FILE).read_text())
    meta["created"] = "2026\x1b]0;pwned\x07"
    (entry.path / META_FILE).write_text(json.dumps(meta))
    listed = CliRunner().invoke(app, ["cache", "ls", "--data-dir", str(tmp_path)]).stdout
    assert listed.strip().split("\t")[8] == "2026\\x1b]0;pwned\\x07"


def test_cli_ls_and_rm(tmp_path):
    store = PrefixCacheStore(tmp_path)
    model = classifier("last-2-blocks")
    key = key_for(model, 2)
    store.obtain(key, model, SEQS)
    runner = CliRunner()
    result = runner.invoke(app, ["cache", "ls", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    fields = result.stdout.strip().split("\t")
    assert fields[0] == key.name and fields[2] == "2 blocks" and fields[5] == f"{len(SEQS)} examples" and fields[7] == "ok"
    assert "1 cache(s)" in result.stderr
    as_json = runner.invoke(app, ["cache", "ls", "--format", "json", "--data-dir", str(tmp_path)]).stdout
    row = json.loads(as_json)
    assert row["name"] == key.name and row["bytes"] == list_caches(tmp_path)[0].nbytes and row["blocks"] == 2
    assert runner.invoke(app, ["cache", "ls", "--json", "--data-dir", str(tmp_path)]).stdout == as_json
    both = runner.invoke(app, ["cache", "ls", "--json", "--format", "text", "--data-dir", str(tmp_path)])
    assert both.exit_code == 2 and both.stdout == "" and both.stderr == "Error: --json and --format text ask for two formats; give one\n"
    bad = runner.invoke(app, ["cache", "rm", "nope", "--data-dir", str(tmp_path)])
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: no prefix cache named 'nope'") and bad.stdout == ""
    assert runner.invoke(app, ["cache", "rm", "--data-dir", str(tmp_path)]).exit_code == 2
    done = runner.invoke(app, ["cache", "rm", key.name[:8], "--data-dir", str(tmp_path)])
    assert done.exit_code == 0 and done.stdout.strip() == str(tmp_path / "cache" / key.name)
    assert list_caches(tmp_path) == []


# --------------------------------------------------------------------------- finished behind training

LATER = 5  # SEQS[5:] stand for the test split: a message of its own, a duplicate of SEQS[2], one sharing SEQS[3]'s prefix


def test_a_build_can_leave_the_last_examples_to_finish_in_the_background():
    model = classifier("last-2-blocks")
    whole = build_prefix_cache(model, SEQS, 2)
    cache = build_prefix_cache(model, SEQS, 2, later_from=LATER)
    assert cache.pending is not None and not cache.pending.done
    first, last = cache.subset(0, LATER), cache.subset(LATER, len(SEQS))
    assert first.pending is None and last.pending is cache.pending
    # The earlier examples are there already: reading them does not wait for the rest.
    torch.testing.assert_close(cached_logits(model, first), plain_logits(model, SEQS[:LATER]), atol=1e-5, rtol=1e-5)
    assert not cache.pending.done
    # Reading the later ones finishes the work first; then every state is the one-pass build's.
    torch.testing.assert_close(cached_logits(model, last), plain_logits(model, SEQS[LATER:]), atol=1e-5, rtol=1e-5)
    assert cache.pending.done
    torch.testing.assert_close(cache.states, whole.states, atol=1e-6, rtol=0)  # other batches: float rounding
    again = build_prefix_cache(model, SEQS, 2, later_from=LATER)
    again.finish()
    assert torch.equal(again.states, cache.states)  # but the same at every build


# Many small later batches (batch_size=2 below), some sharing a prefix (the second pass).
many_gen = torch.Generator().manual_seed(2)
MANY = [torch.randint(0, 50257, (int(n),), generator=many_gen).tolist() for n in torch.randint(2, 50, (30,), generator=many_gen)]
MANY += [MANY[12][:20] + [i, i + 1] for i in range(6)] + [MANY[20][:15] + [i] for i in range(5)]
MANY_LATER = 8


@pytest.mark.skipif(not idle_work.idle_priority_available(), reason="no SCHED_IDLE here")
@pytest.mark.parametrize("workers", [2, 3])
def test_states_finished_on_several_workers_are_those_of_one_worker_and_of_the_foreground(monkeypatch, workers):
    model = classifier("last-2-blocks")
    real_outputs = prefix_cache._frozen_outputs

    def build(n: int, foreground: bool = False) -> tuple[torch.Tensor, set[str]]:
        threads, first_call = set(), threading.Barrier(n, timeout=10)

        def outputs(*args, **kwargs):
            name = threading.current_thread().name
            if name.startswith("spamtune-prefix-cache") and name not in threads:
                threads.add(name)
                first_call.wait()  # every worker computes a batch, at the same time as the others
            return real_outputs(*args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(prefix_cache, "split_threads", lambda threads: (1, n))
            patch.setattr(prefix_cache, "_frozen_outputs", outputs)
            if foreground:
                patch.setattr(idle_work, "lower_own_priority", lambda: False)
            cache = build_prefix_cache(model, MANY, 2, batch_size=2, later_from=MANY_LATER)
            assert cache.pending is not None
            deadline = time.monotonic() + 10
            while not foreground and len(threads) < n and time.monotonic() < deadline:
                time.sleep(0.005)  # before finish takes what is left: each worker holds a batch
            cache.finish()
        return cache.states, threads

    several, threads = build(workers)
    assert threads == {f"spamtune-prefix-cache-{i}" for i in range(1, workers + 1)}
    one, threads = build(1)
    assert threads == {"spamtune-prefix-cache"}
    foreground, threads = build(1, foreground=True)
    assert threads == set()
    assert torch.equal(several, one) and torch.equal(several, foreground)
    torch.testing.assert_close(several, build_prefix_cache(model, MANY, 2).states, atol=1e-6, rtol=0)  # the one-pass build's


def test_a_kept_cache_finished_in_the_background_is_complete_only_once_it_is_done(tmp_path):
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    built = store.obtain(key, model, SEQS, later_from=LATER)
    assert built.outcome == "built" and built.cache.pending is not None
    assert [e.status for e in list_caches(tmp_path)] == ["incomplete"]  # no meta.json yet
    built.cache.finish()
    assert [e.status for e in list_caches(tmp_path)] == ["ok"]
    hit = store.obtain(key, model, SEQS)
    assert hit.outcome == "hit" and torch.equal(hit.cache.states, built.cache.states)


def test_a_cancelled_background_build_leaves_what_it_wrote_for_the_next_build(tmp_path):
    """The test split's states computed behind training, cancelled (the run stopped first): no
    entry, but the states written and their ledger, which the next build of the key resumes."""
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    built = store.obtain(key, model, SEQS, later_from=LATER)
    built.cache.pending.cancel()
    entry = store.entry_dir(key)
    assert sorted(p.name for p in entry.iterdir() if not p.name.startswith(".")) == ["progress.json", "states.partial"]
    assert [e.status for e in list_caches(tmp_path)] == ["interrupted"]
    again = store.obtain(key, model, SEQS, later_from=LATER)
    assert again.outcome == "built" and again.detail.startswith("resumed an interrupted build: ")
    again.cache.finish()
    cold = PrefixCacheStore(tmp_path / "cold").obtain(key, model, SEQS, later_from=LATER)  # batched alike
    cold.cache.finish()
    assert (entry / STATES_FILE).read_bytes() == (cold.path / STATES_FILE).read_bytes()


def test_cli_rm_stale_removes_only_the_entries_of_an_older_format(tmp_path):
    store = PrefixCacheStore(tmp_path)
    old, current = classifier("last-3-blocks"), classifier("last-2-blocks")
    store.obtain(key_for(old, 1), old, SEQS)
    store.obtain(key_for(current, 2), current, SEQS)
    stale = store.entry_dir(key_for(old, 1))
    meta = json.loads((stale / META_FILE).read_text())
    meta["key"]["format"] = CACHE_FORMAT - 1
    (stale / META_FILE).write_text(json.dumps(meta))
    # No meta.json yet, and a live writer holds it (its last examples are computed behind training).
    other_data = SEQS[:-1]
    being_written = store.obtain(key_for(current, 2, other_data), current, other_data, later_from=LATER)
    assert being_written.cache.pending is not None
    runner = CliRunner()
    both = runner.invoke(app, ["cache", "rm", "--all", "--stale", "--data-dir", str(tmp_path)])
    assert both.exit_code == 2 and both.stderr == "Error: give one of cache names, --all and --stale, not --all and --stale\n"
    swept = runner.invoke(app, ["cache", "rm", "--stale", "--data-dir", str(tmp_path)])
    assert swept.exit_code == 0 and swept.stdout == f"{stale}\n" and not stale.exists()
    assert sorted(e.status for e in list_caches(tmp_path)) == ["incomplete", "ok"]
    again = runner.invoke(app, ["cache", "rm", "--stale", "--data-dir", str(tmp_path)])
    assert again.exit_code == 0 and again.stdout == "" and "freed 0 B" in again.stderr
    being_written.cache.finish()
    assert sorted(e.status for e in list_caches(tmp_path)) == ["ok", "ok"]


# --------------------------------------------------------------------------- what ls and rm say


def test_ls_shows_a_truncated_entry_as_damaged_without_hashing_it_and_the_next_run_rebuilds_it(tmp_path, monkeypatch):
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    good = store.obtain(key, model, SEQS).cache.states.clone()
    states = store.entry_dir(key) / STATES_FILE
    os.truncate(states, states.stat().st_size // 3)
    hashed = []
    monkeypatch.setattr(cache_store, "sha256_file", lambda path: hashed.append(path))
    assert [e.status for e in list_caches(tmp_path)] == ["damaged"] and hashed == []
    listed = CliRunner().invoke(app, ["cache", "ls", "--data-dir", str(tmp_path)])
    assert listed.exit_code == 0 and listed.stdout.split("\t")[7] == "damaged"
    monkeypatch.undo()
    again = store.obtain(key, model, SEQS)
    assert again.outcome == "built" and again.detail.startswith("rebuilt: ") and torch.equal(again.cache.states, good)
    assert [e.status for e in list_caches(tmp_path)] == ["ok"]
    # A missing index, or a meta.json that no longer parses, is damage too; `rm --stale` sweeps them.
    (store.entry_dir(key) / "index.safetensors").unlink()
    assert [e.status for e in list_caches(tmp_path)] == ["damaged"]
    (store.entry_dir(key) / META_FILE).write_text("{not json")
    assert [e.status for e in list_caches(tmp_path)] == ["damaged"]
    swept = CliRunner().invoke(app, ["cache", "rm", "--stale", "--data-dir", str(tmp_path)])
    assert swept.exit_code == 0 and swept.stdout == f"{store.entry_dir(key)}\n" and list_caches(tmp_path) == []


def test_ls_lists_an_entry_whose_meta_json_holds_values_of_other_types(tmp_path):
    """A hand-edited or damaged meta.json that still parses: `ls` shows every entry, each field
    of the documented type or null, and one without a key object as damaged."""
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    store.obtain(key_for(model, 2), model, SEQS)
    two = classifier("last-3-blocks")
    store.obtain(key_for(two, 1), two, SEQS)
    edited, keyless = sorted(e.path for e in list_caches(tmp_path))
    meta = json.loads((edited / META_FILE).read_text())
    meta.update(created=12, examples="many")
    (edited / META_FILE).write_text(json.dumps(meta))
    (keyless / META_FILE).write_text(json.dumps({**meta, "key": 5}))
    result = CliRunner().invoke(app, ["cache", "ls", "--json", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert rows[edited.name]["status"] == "ok" and rows[edited.name]["created"] is None and rows[edited.name]["examples"] is None
    assert rows[edited.name]["blocks"] == meta["key"]["blocks"]
    assert rows[keyless.name]["status"] == "damaged" and rows[keyless.name]["blocks"] is None and rows[keyless.name]["created"] is None
    # As every --json listing writes text: non-ASCII as it is, a control character escaped.
    (edited / META_FILE).write_text(json.dumps({**meta, "created": "27 novembre ✓\x1b[2J"}))
    result = CliRunner().invoke(app, ["cache", "ls", "--json", "--data-dir", str(tmp_path)])
    assert '"created": "27 novembre ✓\\u001b[2J"' in result.stdout
    text = CliRunner().invoke(app, ["cache", "ls", "--data-dir", str(tmp_path)])
    assert text.exit_code == 0 and len(text.stdout.splitlines()) == 2
    # A count no file gives is unknown, as the blocks are, not none.
    lines = {line.split("\t")[0]: line.split("\t") for line in text.stdout.splitlines()}
    assert lines[edited.name][5] == "- examples" and lines[keyless.name][2:4] == ["- blocks", "-"]


@pytest.mark.parametrize("planted", ["folder", "pipe", "link"])
def test_a_meta_json_that_is_no_file_is_damage_that_ls_shows_without_waiting_and_the_next_run_rebuilds(tmp_path, planted):
    if planted == "pipe" and not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    good = store.obtain(key, model, SEQS).cache.states.clone()
    meta = store.entry_dir(key) / META_FILE
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(meta.read_bytes())
    meta.unlink()
    {"folder": meta.mkdir, "pipe": lambda: os.mkfifo(meta), "link": lambda: meta.symlink_to(elsewhere)}[planted]()
    listed = []
    lister = threading.Thread(target=lambda: listed.extend(list_caches(tmp_path)), daemon=True)
    lister.start()
    lister.join(timeout=30)  # a pipe opened for reading waits for a writer
    assert not lister.is_alive() and [e.status for e in listed] == ["damaged"]
    again = store.obtain(key, model, SEQS)
    assert again.outcome == "built" and again.detail.startswith("rebuilt: ") and torch.equal(again.cache.states, good)
    assert meta.is_file() and not meta.is_symlink() and elsewhere.is_file()
    assert [e.status for e in list_caches(tmp_path)] == ["ok"]


@pytest.mark.parametrize("where", ["data root", "cache folder"])
def test_ls_and_rm_refuse_a_data_root_that_is_a_file(tmp_path, where):
    root = tmp_path / "data"
    if where == "data root":
        root = tmp_path / "train.csv"
        root.write_text("text,label\n")
        expected = f"Error: the data root {root} is not a folder (--data-dir); to use another data root, pass --data-dir DIR or set SPAMTUNE_HOME=DIR\n"
    else:
        root.mkdir()
        (root / "cache").write_text("")
        expected = f"Error: {root / 'cache'} is not a folder: spamtune keeps its prefix caches there\n"
    runner = CliRunner()
    for command in (["cache", "ls"], ["cache", "rm", "--all"], ["cache", "rm", "--stale"]):
        result = runner.invoke(app, [*command, "--data-dir", str(root)])
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", expected), command


def _failing_removal_of(name: str, monkeypatch, *, files_go: bool = False) -> None:
    """Make the removal of the entry ``name`` fail as in a read-only folder: its files stay, or
    (``files_go``: the cache folder itself read-only) they go and the emptied folder stays."""
    real = cache_catalog.remove_folder

    def remove(path: Path) -> None:
        if path.name != name:
            return real(path)
        if files_go:
            for child in path.iterdir():
                child.unlink()
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(cache_catalog, "remove_folder", remove)


@pytest.mark.parametrize("files_go", [False, True])
def test_rm_names_a_folder_it_cannot_remove_removes_the_others_and_counts_only_what_it_freed(tmp_path, monkeypatch, files_go):
    from spamtune.cli.runs import human_size

    store = PrefixCacheStore(tmp_path)
    one, two = classifier("last-3-blocks"), classifier("last-2-blocks")
    store.obtain(key_for(one, 1), one, SEQS)
    store.obtain(key_for(two, 2), two, SEQS)
    stuck, freeable = store.entry_dir(key_for(two, 2)), store.entry_dir(key_for(one, 1))
    sizes = {e.name: e.nbytes for e in list_caches(tmp_path)}
    _failing_removal_of(stuck.name, monkeypatch, files_go=files_go)
    result = CliRunner().invoke(app, ["cache", "rm", "--all", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and result.stdout == f"{freeable}\n"  # only what went
    freed = sizes[freeable.name] + (sizes[stuck.name] if files_go else 0)
    assert result.stderr == f"freed {human_size(freed)}\nError: cannot remove {stuck}: Permission denied\n"
    assert not freeable.exists() and stuck.is_dir()
    assert [e.status for e in list_caches(tmp_path)] == (["abandoned"] if files_go else ["ok"])


def test_rm_counts_every_folder_it_could_not_remove_in_its_one_error_line(tmp_path, monkeypatch):
    store = PrefixCacheStore(tmp_path)
    one, two = classifier("last-3-blocks"), classifier("last-2-blocks")
    store.obtain(key_for(one, 1), one, SEQS)
    store.obtain(key_for(two, 2), two, SEQS)

    def refuse(path: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(cache_catalog, "remove_folder", refuse)
    result = CliRunner().invoke(app, ["cache", "rm", "--all", "--data-dir", str(tmp_path)])
    first = list_caches(tmp_path)[0].path
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"freed 0 B\nError: cannot remove {first}: Permission denied (and 1 more)\n"


# --------------------------------------------------------------------------- abandoned entries

# A process writing an entry the way a run does, until it is killed.
WRITER = """
import sys
from pathlib import Path
from spamtune.folder_lock import held_for_writing
entry = Path(sys.argv[1])
with held_for_writing(entry):
    (entry / ".states.bin.0123abcd.part").write_bytes(bytes(64))
    print("writing", flush=True)
    sys.stdin.read()
"""


def test_an_entry_a_killed_writer_left_is_abandoned_and_swept_but_never_one_being_written(tmp_path):
    entry = tmp_path / "cache" / "0123456789abcdef0123"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(entry)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n"
        assert [e.status for e in list_caches(tmp_path)] == ["incomplete"]
        kept = CliRunner().invoke(app, ["cache", "rm", "--stale", "--data-dir", str(tmp_path)])
        assert kept.exit_code == 0 and kept.stdout == "" and entry.is_dir()
    finally:
        writer.send_signal(signal.SIGKILL)  # no clean-up runs: as a crash or `kill -9`
        writer.wait()
    assert [e.status for e in list_caches(tmp_path)] == ["abandoned"]
    listed = CliRunner().invoke(app, ["cache", "ls", "--data-dir", str(tmp_path)])
    assert listed.stdout.split("\t")[7] == "abandoned"
    swept = CliRunner().invoke(app, ["cache", "rm", "--stale", "--data-dir", str(tmp_path)])
    assert swept.exit_code == 0 and swept.stdout == f"{entry}\n" and "freed 64 B" in swept.stderr and not entry.exists()


def test_a_folder_not_named_as_an_entry_is_no_cache_that_ls_lists_or_rm_removes(tmp_path):
    # With no meta.json and no writer, a user's folder under cache/ (or a mount's lost+found)
    # was listed as an abandoned cache, and `rm --stale` or `rm --all` deleted it with its files.
    for name in ("my-notes", "lost+found", "0123456789ABCDEF0123", "0123456789abcdef012"):
        (tmp_path / "cache" / name).mkdir(parents=True)
        (tmp_path / "cache" / name / "todo.txt").write_text("mine")
    entry = tmp_path / "cache" / "0123456789abcdef0123"
    entry.mkdir()  # a killed writer's, as in the test above
    assert [(e.name, e.status) for e in list_caches(tmp_path)] == [(entry.name, "abandoned")]
    for how in (["--stale"], ["--all"], ["my"]):
        CliRunner().invoke(app, ["cache", "rm", *how, "--data-dir", str(tmp_path)])
    assert not entry.exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["0123456789ABCDEF0123", "0123456789abcdef012", "lost+found", "my-notes"]
    assert all((p / "todo.txt").read_text() == "mine" for p in (tmp_path / "cache").iterdir())


def test_rm_stale_never_removes_an_entry_a_run_started_writing_after_it_was_listed(tmp_path, monkeypatch):
    entry = tmp_path / "cache" / "0123456789abcdef0123"
    entry.mkdir(parents=True)  # listed as abandoned...
    real = cache_catalog.list_caches

    def listed_then_claimed(root):
        entries = real(root)
        claim.enter_context(folder_lock.held_for_writing(entry))  # ...then a run starts writing it
        return entries

    with contextlib.ExitStack() as claim:
        monkeypatch.setattr(cache_catalog, "list_caches", listed_then_claimed)
        removal = remove_caches(tmp_path, stale=True)
        assert removal.removed == [] and removal.failed == [] and entry.is_dir()


def test_a_writer_makes_its_folder_again_when_rm_removed_it_before_the_lock(tmp_path, monkeypatch):
    entry = tmp_path / "cache" / "0123456789abcdef0123"
    real = folder_lock.lock_folder
    swept = []

    def swept_first(folder, how):
        if how == folder_lock.fcntl.LOCK_SH and not swept:  # `cache rm --stale` sees the new folder unlocked, and removes it
            swept.append(remove_caches(tmp_path, stale=True).removed)
        return real(folder, how)

    monkeypatch.setattr(folder_lock, "lock_folder", swept_first)
    with folder_lock.held_for_writing(entry):
        monkeypatch.setattr(folder_lock, "lock_folder", real)
        assert [e.path for e in swept[0]] == [entry]
        assert entry.is_dir() and [e.status for e in list_caches(tmp_path)] == ["incomplete"]
    assert not entry.exists()  # left empty: removed on the way out


def test_rm_all_keeps_an_entry_a_running_process_is_writing_and_says_so(tmp_path):
    entry = tmp_path / "cache" / "0123456789abcdef0123"
    store = PrefixCacheStore(tmp_path)
    model = classifier("last-3-blocks")
    store.obtain(key_for(model, 1), model, SEQS)
    done = store.entry_dir(key_for(model, 1))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(entry)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n"
        result = CliRunner().invoke(app, ["cache", "rm", "--all", "--data-dir", str(tmp_path)])
        assert result.exit_code == 1 and result.stdout == f"{done}\n" and entry.is_dir() and not done.exists()
        assert result.stderr.endswith(f"Error: cannot remove {entry}: a running process is writing it; remove it once that run ends\n")
    finally:
        writer.communicate("")
    assert writer.returncode == 0


def test_the_build_after_a_killed_writer_removes_its_temporary_file(tmp_path):
    model = classifier("last-3-blocks")
    key = key_for(model, 1)
    entry = PrefixCacheStore(tmp_path).entry_dir(key)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(entry)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert [p.name for p in entry.iterdir()] == [".states.bin.0123abcd.part"]
    assert PrefixCacheStore(tmp_path).obtain(key, model, SEQS).outcome == "built"
    assert ".states.bin.0123abcd.part" not in [p.name for p in entry.iterdir()]
    (listed,) = list_caches(tmp_path)
    assert listed.status == "ok" and listed.nbytes == sum(p.stat().st_size for p in entry.iterdir())


# Enough messages for several batches of each pass: 70 of 2-40 tokens, every seventh continuing
# the one before it after a shared prefix of 14 (a second-pass message).
_GEN = torch.Generator().manual_seed(11)
MANY = [torch.randint(0, 50257, (int(n),), generator=_GEN).tolist() for n in torch.randint(2, 41, (70,), generator=_GEN)]
def _unlink(path: Path) -> None:
    path.unlink()


def _cut_short(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [
    lambda entry: _unlink(entry / "states.partial"),  # removed to free the space
    lambda entry: _cut_short(entry / "states.partial"),
    lambda entry: (entry / "progress.json").write_text("{\"kind\": "),
    lambda entry: (entry / "states.partial").unlink() or (entry / "states.partial").mkdir(),
], ids=["states-removed", "states-cut-short", "ledger-cut-short", "states-a-folder"])  # fmt: skip
def test_an_interrupted_build_whose_states_are_gone_or_cut_short_is_abandoned_and_swept(tmp_path, damage):
    """What is left of a build stopped by Ctrl-C is `interrupted` only while the next build can
    take it over: once its states are gone or cut short (or its ledger unreadable), that build
    starts over, and `cache rm --stale` removes the leftovers rather than keep them for ever."""
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    store.obtain(key, model, SEQS, later_from=LATER).cache.pending.cancel()
    entry = store.entry_dir(key)
    assert [e.status for e in list_caches(tmp_path)] == ["interrupted"]
    damage(entry)
    assert [e.status for e in list_caches(tmp_path)] == ["abandoned"]
    removal = remove_caches(tmp_path, stale=True)
    assert [e.name for e in removal.removed] == [entry.name] and not entry.exists()
    again = store.obtain(key, model, SEQS)
    assert again.outcome == "built" and again.detail is None


def test_a_pipe_planted_as_the_ledger_of_an_interrupted_build_is_no_ledger_and_the_build_never_waits_on_it(tmp_path):
    model = classifier("last-2-blocks")
    store = PrefixCacheStore(tmp_path)
    key = key_for(model, 2)
    entry = store.entry_dir(key)
    entry.mkdir(parents=True)
    os.mkfifo(entry / "progress.json")
    outcome = []
    build = threading.Thread(target=lambda: outcome.append(store.obtain(key, model, SEQS)), daemon=True)
    build.start()
    build.join(30)
    waited = build.is_alive()
    if waited:  # on a writer to the pipe, for ever: give it one, so that the thread ends
        with open(entry / "progress.json", "w") as writer:
            writer.write("{}")
        build.join(30)
    assert not waited
    assert outcome and outcome[0].outcome == "built" and outcome[0].detail is None


MANY = [s if i % 7 or i == 0 or len(MANY[i - 1]) < 14 else MANY[i - 1][:14] + s for i, s in enumerate(MANY)]


@pytest.mark.parametrize("stop_after", [1, 3, 4])  # of the 5 batches: 4 of the first pass, then 1 of the second
def test_a_build_stopped_by_ctrl_c_is_resumed_to_the_same_bytes(tmp_path, monkeypatch, stop_after):
    """Ctrl-C in the build of a kept cache keeps the states written so far and which batches wrote
    them; the next run computes only the others, and its cache is byte for byte a cold build's."""
    model = classifier("last-2-blocks")
    key = key_for(model, 2, MANY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one batch after another: a known place to stop
    try:
        _stop_and_resume(tmp_path, monkeypatch, stop_after, model, key)
    finally:
        torch.set_num_threads(threads)


def _stop_and_resume(tmp_path, monkeypatch, stop_after: int, model, key) -> None:
    cold = PrefixCacheStore(tmp_path / "cold").obtain(key, model, MANY)
    assert cold.outcome == "built" and cold.detail is None
    real = prefix_cache._frozen_outputs
    calls = []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) > stop_after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    store = PrefixCacheStore(tmp_path / "root")
    monkeypatch.setattr(prefix_cache, "_frozen_outputs", stopping)
    with pytest.raises(KeyboardInterrupt):
        store.obtain(key, model, MANY)
    monkeypatch.setattr(prefix_cache, "_frozen_outputs", counted)
    entry = store.entry_dir(key)
    assert sorted(p.name for p in entry.iterdir() if not p.name.startswith(".")) == ["progress.json", "states.partial"]
    assert len(json.loads((entry / "progress.json").read_text())["written"]) == stop_after
    (listed,) = list_caches(tmp_path / "root")
    assert listed.status == cache_catalog.INTERRUPTED and listed.status not in cache_catalog.SWEPT
    calls.clear()
    resumed = store.obtain(key, model, MANY)
    skipped = int(re.fullmatch(r"resumed an interrupted build: (\d+) batches were written already", resumed.detail)[1])
    assert resumed.outcome == "built" and 1 <= skipped <= stop_after and len(calls) == 5 - skipped
    assert (entry / STATES_FILE).read_bytes() == (cold.path / STATES_FILE).read_bytes()
    assert not (entry / "progress.json").exists() and not (entry / "states.partial").exists()
    assert store.obtain(key, model, MANY).outcome == "hit"  # its hash checked


def test_leftovers_of_a_build_that_do_not_fit_are_removed_and_the_build_starts_over(tmp_path, monkeypatch):
    model = classifier("last-2-blocks")
    key = key_for(model, 2, MANY)
    store = PrefixCacheStore(tmp_path)
    cold = PrefixCacheStore(tmp_path / "cold").obtain(key, model, MANY)
    entry = store.entry_dir(key)
    entry.mkdir(parents=True)
    nbytes = (cold.path / STATES_FILE).stat().st_size
    ledger = {"kind": "spamtune-prefix-cache-progress", "key": json.loads(json.dumps(key.__dict__)), "states_bytes": nbytes,
              "plan": "0" * 64, "written": ["now0:0"]}  # fmt: skip
    (entry / "progress.json").write_text(json.dumps(ledger))
    (entry / "states.partial").write_bytes(b"\0" * (nbytes // 2))  # cut short
    again = store.obtain(key, model, MANY)
    assert again.outcome == "built" and again.detail is None
    assert (entry / STATES_FILE).read_bytes() == (cold.path / STATES_FILE).read_bytes()
    assert not (entry / "progress.json").exists() and not (entry / "states.partial").exists()
    # A ledger of another plan (batches named otherwise): its file is taken over, every batch computed again.
    shutil.rmtree(entry)
    entry.mkdir()
    (entry / "progress.json").write_text(json.dumps(ledger))
    (entry / "states.partial").write_bytes(b"\x7f" * nbytes)
    again = store.obtain(key, model, MANY)
    assert again.detail is None and (entry / STATES_FILE).read_bytes() == (cold.path / STATES_FILE).read_bytes()
