"""Atomic writes: normal permissions, all-or-nothing replacement, no temporary file left behind."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading

import pytest

from spamtune import fsutil
from spamtune.errors import DiskFull, SpamtuneError
from spamtune.fsutil import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    WriteBehind,
    read_json,
    scratch_file,
)

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda value: os.umask(value)
    os.umask(saved)


@posix_only
@pytest.mark.parametrize("value", [0o022, 0o002, 0o077])
def test_new_files_get_the_mode_a_plain_open_gives(tmp_path, umask, value):
    umask(value)
    (tmp_path / "plain.txt").write_text("x")
    written = [
        atomic_write_text(tmp_path / "a.txt", "x"),
        atomic_write_bytes(tmp_path / "sub" / "b.bin", b"x"),  # a missing folder is created
        atomic_write_json(tmp_path / "c.json", {"x": 1}),
    ]
    with atomic_path(tmp_path / "d.bin") as tmp:
        tmp.write_bytes(b"x")
    written.append(tmp_path / "d.bin")
    assert mode(tmp_path / "plain.txt") == 0o666 & ~value
    for path in written:
        assert mode(path) == 0o666 & ~value, path


@posix_only
def test_the_mode_holds_when_the_writer_swaps_in_its_own_private_file(tmp_path, umask):
    """safetensors' save_file renames a 0o600 temporary of its own onto the path it is given."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    import torch

    umask(0o022)
    with atomic_path(tmp_path / "model.safetensors") as tmp:
        safetensors_torch.save_file({"w": torch.zeros(2)}, str(tmp))
    assert mode(tmp_path / "model.safetensors") == 0o644
    with atomic_path(tmp_path / "other.bin") as tmp:
        private = tmp_path / "private"
        private.write_bytes(b"x")
        private.chmod(0o600)
        os.replace(private, tmp)
    assert mode(tmp_path / "other.bin") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "other.bin"]


@posix_only
@pytest.mark.parametrize(("before", "after"), [(0o640, 0o640), (0o6755, 0o755)])
def test_replacing_a_file_keeps_its_mode_as_rewriting_it_would(tmp_path, umask, before, after):
    """Its read, write and execute bits; never setuid or setgid, which a write clears too."""
    umask(0o022)
    target = tmp_path / "kept.txt"
    target.write_text("old")
    target.chmod(before)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert mode(target) == after


@posix_only
def test_a_symlink_to_a_setuid_file_lends_the_new_file_no_mode(tmp_path, umask):
    umask(0o022)
    program = tmp_path / "program"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o4755)
    link = tmp_path / "out.txt"
    link.symlink_to(program)
    atomic_write_text(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert mode(link) == 0o644  # a new file's mode, not the setuid program's
    assert program.read_text() == "#!/bin/sh\n" and mode(program) == 0o4755


@pytest.fixture
def predictable_names(monkeypatch):
    """Make the random part of temporary names come from a list, so a test can plant files there."""
    names: list[str] = []
    monkeypatch.setattr(fsutil.secrets, "token_hex", lambda nbytes: names.pop(0))
    return names


@posix_only
@pytest.mark.parametrize("writer", ["atomic_path", "scratch_file"])
def test_a_planted_symlink_at_the_temporary_name_is_skipped(tmp_path, predictable_names, writer):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / ".out.bin.aaaa.part").symlink_to(outside)
    predictable_names.extend(["aaaa", "bbbb"])
    if writer == "atomic_path":
        with atomic_path(folder / "out.bin") as tmp:
            assert tmp.name == ".out.bin.bbbb.part"
            tmp.write_bytes(b"attacker wanted this outside")
        assert (folder / "out.bin").read_bytes() == b"attacker wanted this outside"
    else:
        with scratch_file(folder, "out.bin") as handle:
            handle.write(b"attacker wanted this outside")
            handle.flush()
            assert (folder / ".out.bin.bbbb.part").read_bytes() == b"attacker wanted this outside"
    assert outside.read_text() == "precious"
    assert (folder / ".out.bin.aaaa.part").is_symlink()  # skipped, not opened or removed


@posix_only
def test_scratch_file_is_private_and_removed_on_success_error_and_interrupt(tmp_path):
    with scratch_file(tmp_path / "new", "download") as handle:
        handle.write(b"bytes")
        handle.seek(0)
        assert handle.read() == b"bytes"
        [path] = (tmp_path / "new").iterdir()
        assert path.name.startswith(".download.") and mode(path) == 0o600
    assert list((tmp_path / "new").iterdir()) == []
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with scratch_file(tmp_path, "download") as handle:
                handle.write(b"half")
                raise exc
    assert list(tmp_path.iterdir()) == [tmp_path / "new"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"version": 1})
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "trunc')
            raise RuntimeError("disk on fire")
    assert read_json(target) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_an_os_error_becomes_one_spamtune_error_and_cleans_up(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(SpamtuneError, match=r"cannot write .*out\.txt: Permission denied"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(13, "Permission denied")
    assert target.read_text() == "old"
    # A full disk is said in so many words, so that callers can say what survived.
    with pytest.raises(DiskFull, match=r"^disk full: .*out\.txt$"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_interrupt_is_not_swallowed_and_cleans_up(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "never.txt") as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_destination_is_a_spamtune_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SpamtuneError) as raised:
        atomic_write_text(blocker / "inside.txt", "x")
    # The file in the folder's place is what is wrong, not a file at the name to write.
    assert str(raised.value) == f"cannot write {blocker / 'inside.txt'}: {blocker} is a file, not a folder"
    with pytest.raises(SpamtuneError) as raised:
        atomic_write_text(blocker / "deeper" / "inside.txt", "x")
    assert str(raised.value) == f"cannot write {blocker / 'deeper' / 'inside.txt'}: {blocker} is a file, not a folder"
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("target", ["moved", "../moved/elsewhere"])
def test_a_folder_linked_to_nothing_on_the_way_is_named(tmp_path, target):
    """mkdir says "File exists" when a folder on the way is a symbolic link to nothing (a drive
    not mounted, a folder moved): the error names the link and where it points instead."""
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "latest"
    link.symlink_to(target)
    for final in (link / "report.txt", link / "a" / "b" / "report.txt"):
        with pytest.raises(SpamtuneError) as raised:
            atomic_write_text(final, "x")
        assert str(raised.value) == f"cannot write {final}: {link} is a symbolic link to {target}, which does not exist"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["latest"] and link.is_symlink()


def test_other_failures_keep_the_systems_words(tmp_path):
    """Only the causes that the system's words hide are named; a folder name too long for the
    file system keeps its 'File name too long'."""
    final = tmp_path / ("x" * 300) / "file.txt"
    with pytest.raises(SpamtuneError) as raised:
        atomic_write_text(final, "x")
    assert str(raised.value) == f"cannot write {final}: {os.strerror(errno.ENAMETOOLONG)}"


@pytest.mark.parametrize("char", ["a", "\u00e9"])  # characters of one byte and of two
def test_a_final_name_as_long_as_the_file_system_takes_is_written(tmp_path, char):
    """The temporary's name adds 15 bytes to the final one; a final name the file system takes
    (255 bytes) must not fail with "File name too long" for them."""
    stem = char * ((255 - len(".safetensors")) // len(char.encode()))
    final = tmp_path / f"{stem}.safetensors"
    atomic_write_bytes(final, b"whole")
    assert final.read_bytes() == b"whole" and os.listdir(tmp_path) == [final.name]


def test_write_behind_writes_on_another_thread_one_at_a_time(tmp_path):
    started, release, order = threading.Event(), threading.Event(), []

    def slow_write():
        order.append(("first", threading.current_thread() is not threading.main_thread()))
        started.set()
        release.wait(5)
        atomic_write_text(tmp_path / "state", "first")

    writer = WriteBehind(written="none yet")
    writer.submit(slow_write, "first")
    assert started.wait(5) and writer.written == "none yet"  # in flight: not written yet
    threading.Timer(0.2, release.set).start()
    writer.submit(lambda: order.append(("second", (tmp_path / "state").read_text())), "second")  # waits for the first
    writer.wait()
    assert order == [("first", True), ("second", "first")] and writer.written == "second"


def test_write_behind_raises_a_failed_write_once_and_keeps_the_last_written(tmp_path):
    writer = WriteBehind(written=1)
    writer.submit(lambda: atomic_write_text(tmp_path / "state", "two"), 2)

    def full_disk():
        raise DiskFull(tmp_path / "state")

    writer.submit(full_disk, 3)
    with pytest.raises(DiskFull):
        writer.wait()
    assert writer.written == 2 and (tmp_path / "state").read_text() == "two"
    writer.wait()  # raised once
    writer.submit(full_disk, 4)
    assert writer.settle() == 2  # settle never raises


# read_json in a process of its own, bounded in time and memory: what the fix is for is a read
# that blocks for ever (a pipe) or fills the memory (/dev/zero).
BOUNDED_READ = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from spamtune.errors import SpamtuneError
from spamtune.fsutil import read_json
try:
    read_json(sys.argv[1], "run hyperparameters")
except SpamtuneError as exc:
    print(exc)
"""


def read_json_bounded(path) -> str:
    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", BOUNDED_READ, str(path)], capture_output=True, text=True, env=env, timeout=60)
    return result.stdout.strip()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_or_a_device_in_a_json_files_place_is_refused_not_read(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")  # no writer: a plain open would wait for one
    (tmp_path / "zero.json").symlink_to("/dev/zero")  # endless: a plain read would fill the memory
    for name in ("fifo.json", "zero.json"):
        said = read_json_bounded(tmp_path / name)
        assert said == f"cannot read run hyperparameters {tmp_path / name}: it is not a regular file (a device, pipe or socket)"


def test_a_json_file_too_large_or_nested_too_deeply_is_one_error(tmp_path):
    large = tmp_path / "large.json"
    with open(large, "wb") as f:
        f.truncate(fsutil.MAX_JSON_BYTES + 1)  # sparse: nothing written
    with pytest.raises(SpamtuneError, match=f"{large}: it is larger than 16 MiB$"):
        read_json(large, "run hyperparameters")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # the parser recurses once per level
    with pytest.raises(SpamtuneError, match=f"{deep}: not valid JSON \\(nested too deeply\\)$"):
        read_json(deep, "run hyperparameters")
    with pytest.raises(SpamtuneError, match=f"{tmp_path}: it is a directory$"):
        read_json(tmp_path, "run hyperparameters")
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "real.json")
    (tmp_path / "real.json").write_text('{"a": 1}')  # a link to a regular file reads as the file
    assert read_json(link) == {"a": 1}
