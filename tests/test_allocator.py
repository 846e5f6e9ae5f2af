"""glibc's thresholds for freed memory, fixed in training processes (spamtune.allocator)."""

import os
import subprocess
import sys

import pytest

from spamtune.allocator import keep_freed_memory, users_malloc_settings

_MMAPPED_BYTES = """
import ctypes, sys
from spamtune.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 << 20)
print(kept, libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def mmapped(mode):
        out = subprocess.run([sys.executable, "-c", _MMAPPED_BYTES, mode], env=env, capture_output=True, text=True, check=True)
        kept, grown = out.stdout.split()
        return kept, int(grown)

    try:
        default = mmapped("default")
    except subprocess.CalledProcessError as exc:  # no mallinfo2 (glibc < 2.33)
        pytest.skip(exc.stderr.strip().splitlines()[-1])
    assert default == ("None", pytest.approx(16 << 20, rel=0.01))  # glibc's default: a fresh mapping, unmapped on free
    assert mmapped("keep") == ("True", 0)


def test_a_users_own_malloc_settings_win():
    assert users_malloc_settings({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})
    assert users_malloc_settings({"MALLOC_ARENA_MAX": "2"})
    assert not users_malloc_settings({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2", "PATH": "/bin"})
    assert keep_freed_memory({"MALLOC_TRIM_THRESHOLD_": "0"}) is False


def test_the_command_keeps_freed_memory_for_training_only(monkeypatch):
    from spamtune import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    monkeypatch.setattr(cli, "app", lambda prog_name: None)
    for argv, expected in ((["spamtune", "finetune", "--help"], 1), (["spamtune", "sweep"], 2), (["spamtune", "predict", "x"], 2)):
        monkeypatch.setattr(sys, "argv", argv)
        cli.main()
        assert len(calls) == expected
