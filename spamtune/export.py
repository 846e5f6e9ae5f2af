"""``spamtune export``: a run's classifier (compact or full, LoRA merged) as one standalone
safetensors file for other tools, and that file read back.

The tensors carry the names of a run's ``model.safetensors``; the classifier config is in the
file's metadata under ``config``, so the file alone rebuilds the classifier.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open

from spamtune.checkpoint import (
    FORMAT,
    ClassifierConfig,
    build_classifier,
    check_finite,
    check_header,
    read_checkpoint_header,
    read_tensors,
    save_tensors,
)
from spamtune.compact import holds_classifier, load_run
from spamtune.errors import DiskFull, SpamtuneError, SpamtuneUsageError
from spamtune.interrupts import on_meta_device
from spamtune.run_catalog import why_no_classifier


def export_run(run_dir: str | Path, out: str | Path, data_root: str | Path | None = None, *, force: bool = False) -> Path:
    """Write a run's classifier, LoRA merged, as one standalone safetensors file.

    The tensors carry the names of a run's ``model.safetensors``; the classifier config (labels,
    pooling, model shape...) is in the file's metadata under ``config``, so the file alone is
    enough to rebuild and use the classifier. ``out`` must name a file (``export_target``): an
    existing one is replaced only if it is an earlier export, or with ``force``.
    """
    run_dir = Path(run_dir)
    if not holds_classifier(run_dir):
        raise SpamtuneError(why_no_classifier(run_dir))
    out = export_target(out, force)
    model, cfg = load_run(run_dir, "cpu", data_root)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "spamtune": FORMAT, "config": json.dumps(cfg.to_dict())}
    # save_tensors, not save_file: safetensors reports a full disk as its own error, not an OSError.
    save_tensors(out, tensors, metadata)
    return out


def export_to_stream(run_dir: str | Path, stream: BinaryIO, data_root: str | Path | None = None) -> None:
    """``export_run`` into ``stream`` (stdout, for a pipe): the file is written whole first, in a
    private folder under the temporary directory, so an export that fails puts nothing in the
    stream. A reader that leaves raises ``BrokenPipeError`` for the caller to end quietly."""
    try:
        staging = tempfile.TemporaryDirectory(prefix="spamtune-export-")
    except OSError as exc:  # no usable temporary directory, or a full one
        raise SpamtuneError(f"cannot write the export before streaming it: {exc.strerror or exc}; set TMPDIR to a writable folder with room") from None
    with staging as folder:
        try:
            staged = export_run(run_dir, Path(folder) / "classifier.safetensors", data_root)
        except DiskFull:
            raise DiskFull(f"{tempfile.gettempdir()} (where the export is written before it is streamed); set TMPDIR to a folder with room") from None
        try:
            with open(staged, "rb") as source:
                shutil.copyfileobj(source, stream, 1 << 20)
            stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise SpamtuneError(f"cannot write the output: {exc.strerror or exc}") from None


def export_target(out: str | Path, force: bool = False) -> Path:
    """The file ``export_run`` may write for ``out``, or a one-line refusal.

    A folder (or a name ending in a slash, which means one even before it exists) is a usage
    error, as is an empty name. An existing file is replaced only if it is an earlier export,
    so that a mistyped name cannot destroy another file (a run's own weights, a document);
    ``force`` replaces any regular file, or a symbolic link itself (never the file it points
    to). A device, pipe or socket is never replaced: the rename would put a file in its place.
    """
    text = str(out)
    if text == "":
        raise SpamtuneUsageError("the file to write is empty; give one, e.g. classifier.safetensors")
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        named = "is" if path.is_dir() else "names"
        raise SpamtuneUsageError(f"{text} {named} a folder; give the file to write in it, e.g. {path / 'classifier.safetensors'}")
    try:
        info = os.lstat(path)
    except OSError:  # nothing there (or no folder to hold it yet): the write says what fails
        return path
    if stat.S_ISLNK(info.st_mode):
        if not force:
            raise SpamtuneError(f"{path} is a symbolic link; give another file, or --force to replace the link (not the file it points to)")
    elif not stat.S_ISREG(info.st_mode):
        raise SpamtuneError(f"{path} is not a regular file; give the file to write")
    elif not force and not _is_export(path):
        raise SpamtuneError(f"{path} exists and is not a classifier spamtune exported; give another file, or --force to replace it")
    return path


def _is_export(path: Path) -> bool:
    """Whether ``path`` is a file ``export_run`` wrote: a safetensors header whose metadata holds
    spamtune's format and a config. Only the header is read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return False
    return metadata.get("spamtune") == FORMAT and "config" in metadata


def read_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ClassifierConfig]:
    """The classifier of a file ``export_run`` wrote, in eval mode, checked as a run's
    ``model.safetensors`` is: the header against the config in its metadata (names, shapes,
    float32) before a tensor is read, and no weight holding NaN or infinity."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        cfg = ClassifierConfig.from_dict(json.loads(metadata["config"]))
    except (SafetensorError, OSError, KeyError, ValueError, SpamtuneError) as exc:
        raise SpamtuneError(f"{path} is not a classifier exported by spamtune ({exc})") from None
    check_header(read_checkpoint_header(path), cfg, path, config_source=f"the config in {path}'s metadata")

    def checked(name: str, tensor: torch.Tensor) -> torch.Tensor:
        check_finite(tensor, name, path)
        return tensor

    tensors = read_tensors(path, device, checked)
    with on_meta_device():
        model = build_classifier(cfg)
    model.load_state_dict(tensors, strict=True, assign=True)  # names and shapes: checked in the header
    return model.eval(), cfg

