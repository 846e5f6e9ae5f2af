"""A safetensors file filled one tensor at a time: what any safetensors reader reads back."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from spamtune.tensor_file import TensorFileWriter

TENSORS = {
    "b.weight": torch.randn(3, 4),
    "a.ids": torch.arange(5, dtype=torch.int64),
    "c.half": torch.randn(7).bfloat16(),
    "d.mask": torch.tensor([True, False, True]),
    "e.empty": torch.empty(0, 3),
}


def open_file(path):
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)


def test_tensors_written_in_any_order_read_back_whole_with_the_final_metadata(tmp_path):
    path = tmp_path / "t.safetensors"
    fd = open_file(path)
    writer = TensorFileWriter(fd, TENSORS, {"sha256": "0" * 64})
    for name in ["d.mask", "e.empty", "c.half", "b.weight", "a.ids"]:
        writer.write(name, TENSORS[name])
    writer.finish({"sha256": "f" * 64})
    os.close(fd)
    back = load_file(path)
    assert sorted(back) == sorted(TENSORS)
    assert all(back[n].dtype == t.dtype and torch.equal(back[n], t) for n, t in TENSORS.items())
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"sha256": "f" * 64}
    assert int.from_bytes(path.read_bytes()[:8], "little") % 8 == 0  # header padded, as the format advises


def test_the_header_waits_for_every_tensor_and_for_metadata_that_fits(tmp_path):
    fd = open_file(tmp_path / "t.safetensors")
    writer = TensorFileWriter(fd, TENSORS, {"sha256": "0" * 64})
    for name in ["a.ids", "b.weight", "c.half", "d.mask"]:
        writer.write(name, TENSORS[name])
    with pytest.raises(ValueError, match="1 tensors not written, e.g. e.empty"):
        writer.finish({"sha256": "f" * 64})
    writer.write("e.empty", TENSORS["e.empty"])
    with pytest.raises(ValueError, match="more than the"):
        writer.finish({"sha256": "f" * 64, "origin": "x" * 100})
    with pytest.raises(ValueError, match="is not the layout's"):
        writer.write("b.weight", torch.randn(4, 3))
    os.close(fd)
