"""A safetensors file written one tensor at a time, as each is ready.

``safetensors.torch.save_file`` takes every tensor at once and copies each into bytes of its
own before writing: for the 500 MB gpt2-small base, 0.9-1.2 s on the 2-core CI machine, where
the writes alone take 0.3 s. Here the layout is fixed first, from the tensors' names, dtypes and
shapes, before their values need to exist; each tensor then goes to its place with ``pwrite``
straight from its memory, in any order and from any thread; the header goes last, so that its
metadata can be something only known at the end (the hash of the values), into room kept for it
at the start. The file is the format's own: tensors in name order (as ``save_file`` lays out
tensors of one dtype), the header JSON padded with spaces to a multiple of 8 bytes.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Mapping

import torch

# The safetensors names of the dtypes a model's tensors come in.
DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


class TensorFileWriter:
    """Fills the file open for writing at ``fd`` with ``layout``'s tensors (their names, dtypes
    and shapes are read now; their values when each is written). ``metadata`` is a stand-in
    as long as the metadata that ``finish`` will write (a 64-digit hash for a 64-digit hash)."""

    def __init__(self, fd: int, layout: Mapping[str, torch.Tensor], metadata: Mapping[str, str]):
        self._fd = fd
        self._entries: dict[str, dict] = {}
        offset = 0
        for name in sorted(layout):
            tensor = layout[name]
            if tensor.dtype not in DTYPE_NAMES:
                raise ValueError(f"{name}: no safetensors name for {tensor.dtype}")
            size = tensor.numel() * tensor.element_size()
            self._entries[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
            offset += size
        self._room = len(self._header(metadata))
        self._data_start = 8 + self._room
        self._unwritten = set(self._entries)
        self._lock = threading.Lock()

    def _header(self, metadata: Mapping[str, str]) -> bytes:
        header = json.dumps({"__metadata__": dict(metadata), **self._entries}, separators=(",", ":")).encode()
        return header + b" " * (-len(header) % 8)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Put ``tensor``'s bytes where the layout has ``name`` (the same dtype and shape)."""
        entry = self._entries[name]
        if DTYPE_NAMES.get(tensor.dtype) != entry["dtype"] or list(tensor.shape) != entry["shape"]:
            raise ValueError(f"{name}: {tensor.dtype} {list(tensor.shape)} is not the layout's {entry['dtype']} {entry['shape']}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        _pwrite_all(self._fd, memoryview(data), self._data_start + entry["data_offsets"][0])
        with self._lock:
            self._unwritten.discard(name)

    def finish(self, metadata: Mapping[str, str]) -> None:
        """Write the header, now that ``metadata`` is known: after every tensor, so that a file
        with a header is a whole one."""
        if self._unwritten:
            raise ValueError(f"{len(self._unwritten)} tensors not written, e.g. {min(self._unwritten)}")
        header = self._header(metadata)
        if len(header) > self._room:
            raise ValueError(f"the metadata takes {len(header)} bytes, more than the {self._room} kept for it")
        _pwrite_all(self._fd, memoryview(struct.pack("<Q", self._room) + header.ljust(self._room)), 0)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    # One call writes at most ~2 GB on Linux, and a signal can cut any call short.
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
