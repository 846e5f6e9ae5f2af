"""Base weights, identified by sha256 and stored once under ``<data root>/bases/``.

A base is the model a run starts from, without its classification head: OpenAI's GPT-2, or a
seeded random init. Its identity is the sha256 of its tensors (names, dtypes, shapes, bytes),
which does not depend on how a file serialises them: the key of the prefix caches built from
it and the reference a compact run keeps instead of a full copy. ``bases/<sha256>.safetensors``
holds each base once, whatever number of runs refer to it; a base missing there is rebuilt
from its origin (the downloaded GPT-2 file, or the seed) when that gives the same hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from spamtune import paths
from spamtune.base_ref import BaseRef, folder_in_the_way, how_to_clear, is_sha256, recorded_origin
from spamtune.checkpoint import read_tensors
from spamtune.errors import DiskFull, SpamtuneError, SpamtuneWarning
from spamtune.fsutil import atomic_write_json, creation_failure, new_temporary, write_error
from spamtune.model import RANDOM_INIT_VERSION
from spamtune.paths import base_file
from spamtune.tensor_file import TensorFileWriter
from spamtune.verified import VerifiedFiles, file_signature, read_index

BASE_FORMAT = "spamtune-base/1"
# Random-init bases this data root holds, by what determines them, so that a later run on the
# same seed reads the stored base instead of drawing 124 M numbers again and hashing them.
ORIGINS_FILE = "random-origins.json"
# Base files whose hash was checked (``spamtune.verified``): hashing the gpt2-small base took
# 0.4 s, a third of a prediction's start-up.
VERIFIED_FILE = "verified.json"


def base_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's base: every tensor but the classification head and LoRA's A/B."""
    return {n: t for n, t in model.state_dict().items() if not n.startswith("out_head.") and ".lora_" not in n}


def weights_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors: names, dtypes, shapes and bytes, in name order."""
    digest = _new_digest()
    for name in sorted(tensors):
        _hash_tensor(digest, name, tensors[name])
    return digest.hexdigest()


def _new_digest():
    return hashlib.sha256(b"spamtune-weights/1\0")


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy())


def base_weights_sha256(model: torch.nn.Module) -> str:
    """The identity of the base a model was built from. Call it before training moves a weight."""
    return weights_sha256(base_tensors(model))


def store_base(root: str | Path, model: torch.nn.Module, origin: dict, sha256: str | None = None) -> BaseRef:
    """Keep a model's base under ``<root>/bases``, once: a file stored under its hash stays as
    it is. ``sha256``: its hash, when the caller has just taken it (then a stored file is not
    written again, and the tensors are not hashed again)."""
    root = Path(root)
    if sha256 is not None and _is_stored(base_file(root, sha256)):
        ref = BaseRef(sha256, dict(origin))
        remember_random_origin(root, ref)
        return ref
    if sha256 is not None and folder_in_the_way(base_file(root, sha256)):  # no file to write for nothing
        ref = BaseRef(sha256, dict(origin))
        _not_stored(base_file(root, sha256), ref)
        return ref
    with BaseIntake(base_tensors(model), origin, root, sha256) as intake:
        return intake.finish()


def _is_stored(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _not_stored(path: Path, ref: BaseRef) -> None:
    """Say, without stopping the work, that the base made here cannot be kept: it is made again
    from its origin at each use until the folder in its place is gone. Warned from this one
    place, so that a command that meets it twice (a run stores its base, then compares with
    it) says it once."""
    warnings.warn(
        f"base {ref.sha256[:12]}... ({ref.describe()}) is made again from its origin at each use and cannot be stored: "
        f"{how_to_clear(path)}",
        SpamtuneWarning,
    )


def random_origin_key(origin: dict) -> str | None:
    """What a seeded random init is a function of: the shape, the seed, PyTorch's generator
    (its version) and this code's way of drawing. None for a base read from a file."""
    if origin.get("kind") != "random":
        return None
    return json.dumps({**origin, "torch": torch.__version__.split("+")[0], "init": RANDOM_INIT_VERSION}, sort_keys=True)


def _random_origins(root: Path) -> dict:
    return read_index(paths.bases_dir(root) / ORIGINS_FILE, f"bases index {ORIGINS_FILE}")


def remember_random_origin(root: Path, ref: BaseRef) -> None:
    """Note in the index which stored base a random origin drew. Nothing where the index cannot
    be written (a folder in its place, no room): it is a shortcut, and the next run on the
    seed only draws the base again, where failing here would stop a run that has its base."""
    key = random_origin_key(ref.origin)
    if key is None:
        return
    known = _random_origins(root)
    if known.get(key) != ref.sha256:
        with contextlib.suppress(SpamtuneError):
            atomic_write_json(paths.bases_dir(root) / ORIGINS_FILE, {**known, key: ref.sha256})


def stored_random_base(root: str | Path, origin: dict) -> BaseRef | None:
    """The stored base a random ``origin`` drew before, if this data root still holds it."""
    key = random_origin_key(origin)
    sha = _random_origins(Path(root)).get(key) if key else None
    # The index is only a shortcut: a value edited into no sha256 is no base, not an error; one
    # naming another stored base (another seed's) would have the run train on that base, under
    # this origin, so the file must record this origin too. A miss costs a draw.
    if is_sha256(sha) and base_file(Path(root), sha).is_file() and recorded_origin(base_file(Path(root), sha)) == origin:
        return BaseRef.from_dict({"sha256": sha, "origin": origin})
    return None


class BaseIntake:
    """A base's sha256 and, given a data root, its stored file, made on two side threads (one
    hashes, one writes) as its tensors become final: a random base is hashed and written while
    the rest of it is still being drawn. gpt2-small's base, drawn, then hashed, then stored,
    took 1.0 + 0.3 + 0.9 s of a first run on the 2-core CI machine; this way the hash and the
    write run beside the draw and beside each other.

    Used as a context manager: ``final(name)`` as each tensor is done (the threads take them
    in name order), then ``finish()`` for the reference. Leaving the block without
    ``finish`` (an error, Ctrl-C) stops the threads and removes the partial file. ``sha256``:
    the tensors' hash where the caller has just taken it; then only the file is made.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], origin: dict, root: str | Path | None = None, sha256: str | None = None):
        self._tensors = dict(tensors)
        self._origin = dict(origin)
        self._root = Path(root) if root is not None else None
        self._ready = threading.Condition()
        self._final: set[str] = set()
        self._all_final = self._stopped = False
        self._failures: list[BaseException] = []
        self._digest = _new_digest()
        self._sha256 = sha256
        self._tmp: Path | None = None
        self._fd = -1
        self._threads: list[threading.Thread] = []
        steps = [self._hash] if sha256 is None else []
        if self._root is not None:
            try:
                self._tmp, self._fd = new_temporary(paths.bases_dir(self._root), "base")
            except OSError as exc:
                raise _folder_write_error(paths.bases_dir(self._root), exc) from None
            try:
                self._file = TensorFileWriter(self._fd, self._tensors, self._metadata("0" * 64))
            except BaseException:
                self.__exit__()
                raise
            steps.append(self._file.write)
        self._threads = [threading.Thread(target=self._take, args=(step,), name="spamtune-base", daemon=True) for step in steps]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> BaseIntake:
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def _metadata(self, sha256: str) -> dict[str, str]:
        return {"format": "pt", "spamtune": BASE_FORMAT, "sha256": sha256, "origin": json.dumps(self._origin)}

    def final(self, name: str, tensor: torch.Tensor | None = None) -> None:
        """``name``'s values will not change again (``tensor``: ignored, for use as a callback)."""
        with self._ready:
            self._final.add(name)
            self._ready.notify_all()

    def _take(self, step: Callable[[str, torch.Tensor], None]) -> None:
        try:
            for name in sorted(self._tensors):
                with self._ready:
                    self._ready.wait_for(lambda: name in self._final or self._all_final or self._stopped)
                    if self._stopped:
                        return
                step(name, self._tensors[name])
        except BaseException as exc:  # raised on the caller's thread by finish
            self._failures.append(exc)

    def _hash(self, name: str, tensor: torch.Tensor) -> None:
        _hash_tensor(self._digest, name, tensor)

    def _stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def finish(self) -> BaseRef:
        """Every tensor is final: the reference, once the hash is taken and the file (if any)
        is in place under its name (an ``OSError`` becomes the one-line write error)."""
        with self._ready:
            self._all_final = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()
        ref = BaseRef(self._sha256 or self._digest.hexdigest(), self._origin)
        if self._root is None:
            if self._failures:
                raise self._failures[0]
            return ref
        final = base_file(self._root, ref.sha256)
        try:
            if self._failures:
                raise self._failures[0]
            self._file.finish(self._metadata(ref.sha256))
            os.close(self._fd)
            self._fd = -1
            if folder_in_the_way(final):  # used from memory; this copy goes on exit
                _not_stored(final, ref)
            elif not _is_stored(final):  # else the same base is stored already: this copy goes on exit
                os.replace(self._tmp, final)
                self._tmp = None
                _verified_bases(self._root).remember_written(ref.sha256, final)
        except OSError as exc:
            raise write_error(final, exc) from None
        remember_random_origin(self._root, ref)
        return ref


def _folder_write_error(folder: Path, exc: OSError) -> SpamtuneError:
    """``write_error`` for a file made in ``folder``: the cause is asked of a file in it, so that
    a file standing where the folder goes is named as such rather than as "File exists"."""
    error = write_error(folder, exc)
    return error if isinstance(error, DiskFull) else SpamtuneError(f"cannot write in {folder}: {creation_failure(folder / 'base', exc)}")


def _verified_bases(root: Path) -> VerifiedFiles:
    return VerifiedFiles(paths.bases_dir(root) / VERIFIED_FILE)


def load_base(
    root: str | Path,
    ref: BaseRef,
    device: str | torch.device = "cpu",
    *,
    verify: bool = True,
    keep: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The base's tensors: from ``<root>/bases``, else rebuilt from its origin (and stored).

    ``verify`` re-hashes what was read, so a damaged or substituted file is never a silently
    different classifier: it is replaced by the base made again from its origin when that gives
    the right hash, else an error; a file hashed before and untouched since (``VERIFIED_FILE``)
    is not hashed again. ``keep(name, tensor)`` turns each tensor as it is read (a
    check, a cast to 16 bits), so that the file's fp32 tensors are never all held at once. A
    base that can be neither found nor rebuilt is one line saying how to get it back.
    """
    root = Path(root)
    path = base_file(root, ref.sha256)
    keep = keep or (lambda name, tensor: tensor)
    if path.is_file():
        try:
            tensors, intact = _read_stored(root, ref, device, keep, verify)
        except SpamtuneError as unreadable:  # truncated or not safetensors: damaged, as below
            return {n: keep(n, t.to(device)) for n, t in _rebuilt(root, ref, replacing=str(unreadable)).items()}
        if intact:
            return tensors
        # Damaged or substituted: made again from its origin when that gives the right hash.
        damaged = f"{path} does not hold the base it is named after (sha256 mismatch)"
        return {n: keep(n, t.to(device)) for n, t in _rebuilt(root, ref, replacing=damaged).items()}
    return {n: keep(n, t.to(device)) for n, t in _rebuilt(root, ref).items()}


def _read_stored(root: Path, ref: BaseRef, device, keep: Callable[[str, torch.Tensor], torch.Tensor], verify: bool) -> tuple[dict, bool]:
    """The stored base's tensors through ``keep``, and whether they are the base ``ref`` names:
    hashed as they are read (in name order, as ``weights_sha256`` hashes), unless ``verify`` is
    off or the file was hashed before and is untouched since. Raises ``SpamtuneError`` for a
    file that cannot be read."""
    path = base_file(root, ref.sha256)
    signature = file_signature(path)
    if not verify or _verified_bases(root).known(ref.sha256, signature):
        return read_tensors(path, device, keep), True
    digest = _new_digest()

    def hashed(name: str, tensor: torch.Tensor) -> torch.Tensor:
        _hash_tensor(digest, name, tensor)
        return keep(name, tensor)

    tensors = read_tensors(path, device, hashed)
    intact = digest.hexdigest() == ref.sha256
    if intact:
        _verified_bases(root).remember(ref.sha256, signature)
    return tensors, intact


def stored_base_intact(root: str | Path, ref: BaseRef) -> bool:
    """Whether ``<root>/bases`` holds the base ``ref`` names, readable and of its hash: asked
    when the stored base and a run's files disagree, to say which of them is at fault."""
    root = Path(root)
    if not base_file(root, ref.sha256).is_file():
        return False
    try:
        return _read_stored(root, ref, "cpu", lambda name, tensor: None, verify=True)[1]
    except SpamtuneError:
        return False


def _rebuilt(root: Path, ref: BaseRef, replacing: str | None = None) -> dict[str, torch.Tensor]:
    """The base made again from its origin, its hash checked, and stored in place of a missing
    file or of the damaged one that ``replacing`` describes; else one line on how to get it back."""
    path = base_file(root, ref.sha256)
    tensors = _rebuild(root, ref)
    if tensors is None and folder_in_the_way(path):
        raise SpamtuneError(f"base {ref.sha256[:12]}... ({ref.describe()}) is not stored: {how_to_clear(path)}, then {how_to_get_back(ref, root)}")
    if tensors is None:
        raise SpamtuneError(f"{replacing}, and {how_to_get_back(ref, root)}" if replacing else missing_base_message(root, ref))
    actual = weights_sha256(tensors)
    if actual != ref.sha256:
        raise SpamtuneError(
            f"{replacing + '; ' if replacing else ''}the base ({ref.describe()}) rebuilt from its origin has sha256 "
            f"{actual[:12]}..., not the {ref.sha256[:12]}... the run was trained on; put {path.name} back into {path.parent}"
        )
    if not _can_store_in(root):  # a read-only data root: the run loads from the base made here
        return tensors
    if folder_in_the_way(path):  # as from a read-only data root, but the user hears of it
        _not_stored(path, ref)
        return tensors
    try:
        if replacing:
            path.unlink(missing_ok=True)
        with BaseIntake(tensors, ref.origin, root, actual) as intake:
            intake.finish()
    except (SpamtuneError, OSError) as exc:  # a full disk, a file where the folder goes: as read-only
        reason = str(exc) if isinstance(exc, SpamtuneError) else write_error(path, exc)
        warnings.warn(
            f"base {ref.sha256[:12]}... ({ref.describe()}) could not be stored, so it is made again from its origin at each use: {reason}",
            SpamtuneWarning,
        )
    return tensors


def _can_store_in(root: Path) -> bool:
    """Whether a base may be stored under ``root``, as far as the file system says (a read-only
    mount, a folder of someone else's): storing a rebuilt base saves the next load the rebuild,
    and loading must not fail for want of it."""
    probe = paths.bases_dir(root)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK)


def missing_base_message(root: Path, ref: BaseRef) -> str:
    where = f"base {ref.sha256[:12]}... ({ref.describe()}) is not in {paths.bases_dir(root)}"
    if ref.origin.get("kind") == "file":
        return f"{where} and {ref.origin.get('path')} is gone; {how_to_get_back(ref, root)}"
    return f"{where}; {how_to_get_back(ref, root)}"


def how_to_get_back(ref: BaseRef, root: Path) -> str:
    """What brings a base back that its origin cannot make again in the data root ``root``."""
    kind = ref.origin.get("kind")
    if kind == "pretrained":
        # The download goes to the default root unless told otherwise.
        where = "" if Path(root).absolute() == paths.data_root() else f" --data-dir {shlex.quote(str(root))}"
        return f"run `spamtune download model {ref.origin.get('name')}{where}` to get it back"
    if kind == "file":
        return f"put that file back or copy {ref.sha256}.safetensors there"
    return f"copy {ref.sha256}.safetensors there from where the run was trained"


def _rebuild(root: Path, ref: BaseRef) -> dict[str, torch.Tensor] | None:
    """The base made again from its origin, or None when its origin is not at hand."""
    from spamtune.model import GPTConfig, GPTModel
    from spamtune.weights import load_pretrained_weights

    origin = ref.origin
    kind = origin.get("kind")
    try:
        if kind == "random":
            if origin.get("init", 1) != RANDOM_INIT_VERSION:  # drawn another way: not to be had here
                return None
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(origin["seed"]))
                return base_tensors(GPTModel(GPTConfig.from_dict(origin["model"])))
        if kind in ("pretrained", "file"):
            source = paths.find_pretrained_weights(root, origin["name"]) if kind == "pretrained" else Path(origin["path"])
            if source is None or not Path(source).is_file():
                return None
            cfg = GPTConfig.from_dict(origin["model"]) if "model" in origin else GPTConfig.from_name(origin["name"])
            with torch.device("meta"):
                model = GPTModel(cfg)
            return base_tensors(load_pretrained_weights(model, source))
    except (KeyError, TypeError, ValueError):
        return None
    return None
