"""`spamtune download` against a real HTTP server on 127.0.0.1: no test reaches past loopback.

Data tests serve small zips holding a made-up SMSSpamCollection and pass its checksum through
``DataSource``; the CLI (which always uses the real checksum) is run on the real file (the
copy bundled in data/, or ../shared's). Model tests serve a tiny GPT-2-shaped ``model.safetensors`` the
way the Hugging Face hub does and ask for it with a matching ``GPTConfig``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import socket
import time
import types
import zipfile
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import file_download as hf_file_download
from huggingface_hub.utils import _http as hf_http
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import write_hf_gpt2
from loopback_server import LoopbackServer, closed_port_url
from spamtune import download, model, paths
from spamtune.cli import app
from spamtune.download import (
    BUNDLED_SMS_FILE,
    MAX_DOWNLOAD_BYTES,
    SMS_SHA256,
    DataSource,
    data_urls,
    download_model,
    fetch_data,
    import_data,
    import_model,
    hub_unreachable,
    sha256_file,
    use_bundled_data,
)
from spamtune.errors import SpamtuneError
from spamtune.model import GPTConfig

FAKE_SMS = b"".join(
    f"{'spam' if i % 7 == 0 else 'ham'}\tmessage number {i}, with some words to pad it out\n".encode()
    for i in range(2000)
)  # ~110 kB, so half a (stored) zip of it spans several 64 kB reads
FAKE_SOURCE = DataSource(urls=(), sha256=hashlib.sha256(FAKE_SMS).hexdigest(), size=len(FAKE_SMS))
CHUNK_OF_ZEROS = bytes(1 << 16)
TINY = GPTConfig(context_length=64, emb_dim=32, n_layers=2, n_heads=4)
REPO = paths.HF_REPOS["gpt2-small"]
RESOLVE = f"/{REPO}/resolve/main/{paths.HF_WEIGHTS_FILE}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def source_for(*urls: str) -> DataSource:
    return DataSource(urls=urls, sha256=FAKE_SOURCE.sha256, size=FAKE_SOURCE.size)


def leftovers(folder: Path) -> list[str]:
    """Partial or temporary files left behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".incomplete")))


def cli(*args: str, **env):
    return CliRunner().invoke(app, list(args), env=env or None)


@pytest.fixture(autouse=True)
def offline_by_default(tmp_path, monkeypatch):
    """Whatever a test forgets to point at its own server goes to a closed loopback port, no name
    but loopback resolves at all, and the Hugging Face cache is the test's own."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPAMTUNE_DATA_URLS", closed_port_url("/default.zip"))
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url().rstrip("/"))
    monkeypatch.delenv("SPAMTUNE_HOME", raising=False)
    cache = tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))  # read once, at import
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise OSError(f"a test tried to reach {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    # huggingface_hub waits between retries (up to 23 s in all when a host is down): not here.
    no_wait = types.SimpleNamespace(sleep=lambda seconds: None)
    monkeypatch.setattr(hf_http, "time", no_wait)
    monkeypatch.setattr(hf_file_download, "time", no_wait)


@pytest.fixture
def server():
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "data"


class FullDiskFile:
    """A file opened for writing whose every write fails as on a full disk."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):  # seek, tell, read...: the real file's
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@pytest.fixture
def fill_disk(monkeypatch):
    """Call it to fill the disk: from then on every file opened for writing through pathlib or
    os.fdopen (ours and huggingface_hub's) fails to take any byte."""
    real_open, real_fdopen = Path.open, os.fdopen

    def open_on_full_disk(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        return FullDiskFile(handle) if any(flag in mode for flag in "wax+") else handle

    def fdopen_on_full_disk(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        return FullDiskFile(handle) if any(flag in mode for flag in "wax+") else handle

    def fill():
        monkeypatch.setattr(Path, "open", open_on_full_disk)
        monkeypatch.setattr(os, "fdopen", fdopen_on_full_disk)

    return fill


# --------------------------------------------------------------------------- data, core


def test_download_extracts_verifies_and_writes(server, root):
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS, "readme": b"about"}))
    result = fetch_data(root, source_for(url))
    assert result.status == "downloaded"
    assert result.path == paths.sms_file(root)
    assert result.path.read_bytes() == FAKE_SMS
    assert leftovers(root) == []
    assert [p.name for p in result.path.parent.iterdir()] == ["SMSSpamCollection"]


def test_verified_copy_is_not_downloaded_again(server, root):
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS}))
    fetch_data(root, source_for(url))
    notes = []
    result = fetch_data(root, source_for(url), notify=notes.append)
    assert result.status == "present"
    assert len(server.requests_for("/sms.zip")) == 1
    assert "already there and verified" in notes[0]


def test_modified_copy_is_downloaded_again(server, root):
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS}))
    paths.sms_file(root).parent.mkdir(parents=True)
    paths.sms_file(root).write_bytes(FAKE_SMS[:-10])
    assert fetch_data(root, source_for(url)).status == "downloaded"
    assert paths.sms_file(root).read_bytes() == FAKE_SMS


def test_dropped_connection_resumes_with_range_in_the_same_run(server, root):
    archive = make_zip({"SMSSpamCollection": FAKE_SMS})
    url = server.add("/sms.zip", archive, script=["drop"])
    notes = []
    fetch_data(root, source_for(url), notify=notes.append)
    gets = server.requests_for("/sms.zip")
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    assert gets[1].headers["range"] == f"bytes={len(archive) // 2}-"
    assert paths.sms_file(root).read_bytes() == FAKE_SMS
    assert any("resuming" in n for n in notes)
    assert leftovers(root) == []


def test_a_failed_download_leaves_nothing_and_the_next_run_starts_over(server, root):
    archive = make_zip({"SMSSpamCollection": FAKE_SMS})
    url = server.add("/sms.zip", archive, script=["drop", 503])  # cut off, then the server is down
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(url))
    assert str(err.value) == f"127.0.0.1 answered HTTP 503 Service Unavailable for {url}"
    assert not paths.sms_file(root).exists()
    assert list(paths.sms_file(root).parent.iterdir()) == []  # the half that arrived is gone too

    fetch_data(root, source_for(url))
    assert "range" not in server.requests_for("/sms.zip")[-1].headers
    assert paths.sms_file(root).read_bytes() == FAKE_SMS
    assert leftovers(root) == []


def test_server_that_ignores_range_restarts_from_scratch(server, root):
    archive = make_zip({"SMSSpamCollection": FAKE_SMS})
    url = server.add("/sms.zip", archive, script=["drop"], ranges=False)  # a Range request gets 200 and it all
    fetch_data(root, source_for(url))
    gets = server.requests_for("/sms.zip")
    assert len(gets) == 2 and "range" in gets[1].headers
    assert paths.sms_file(root).read_bytes() == FAKE_SMS


def test_an_endless_stream_is_cut_off_at_the_cap_and_removed(server, root):
    # Zeros without a Content-Length; the server gives up 4 MiB past the cap by itself.
    url = server.add("/sms.zip", CHUNK_OF_ZEROS, stream_up_to=MAX_DOWNLOAD_BYTES + (4 << 20))
    received = []
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(url), on_progress=lambda done, total: received.append(done))
    assert str(err.value) == (
        f"{url} sent more than the 20 MiB allowed: not the SMS Spam Collection's zip (about 200 kB); nothing kept"
    )
    assert MAX_DOWNLOAD_BYTES - (1 << 16) < max(received) <= MAX_DOWNLOAD_BYTES
    assert list(paths.sms_file(root).parent.iterdir()) == []


@pytest.fixture
def short_stall_window(monkeypatch):
    """The stall guard's minute, cut to half a second (and its bytes to match)."""
    monkeypatch.setattr(download, "STALL_WINDOW_S", 0.5)
    monkeypatch.setattr(download, "MIN_BYTES_PER_WINDOW", 1000)


def test_a_trickle_is_given_up_on_and_leaves_nothing(server, root, monkeypatch):
    # A byte every 0.1 s: each read comes well within HTTP_TIMEOUT_S, forever. The window is
    # the user's to set, and the bytes it asks for scale with it (16 KiB a minute).
    monkeypatch.setenv("SPAMTUNE_DOWNLOAD_STALL_S", "0.5")
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS}), pace=(1, 0.1))
    result = cli("download", "data", "--url", url, "--data-dir", str(root))
    assert (result.exit_code, result.stdout) == (1, "")
    assert re.fullmatch(
        rf"Error: {re.escape(url)} sent \d bytes in 0\.\d s; giving up \(a working link, however slow, "
        r"sends 137 bytes in 0\.5 s; SPAMTUNE_DOWNLOAD_STALL_S=SECONDS allows a longer window\)\n",
        result.stderr,
    ), result.stderr
    assert not root.exists() or list(paths.sms_file(root).parent.iterdir()) == []


def test_a_trickled_response_head_is_given_up_on_in_its_window(server, root, monkeypatch):
    # A status line and headers a byte at a time never end the request; the window still does.
    monkeypatch.setenv("SPAMTUNE_DOWNLOAD_STALL_S", "0.5")
    url = server.add("/sms.zip", pace_headers=(1, 0.1))
    started = time.monotonic()
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(url))
    assert time.monotonic() - started < 3
    assert str(err.value).startswith(f"{url} sent no complete response headers in 0.5 s; giving up (a working link")
    assert leftovers(root) == [] and list(paths.sms_file(root).parent.iterdir()) == []


def test_a_stall_ends_with_its_window_not_with_the_next_byte(server, root, short_stall_window):
    # One byte then nothing for 5 s (within HTTP_TIMEOUT_S): given up on at the window's end,
    # the read it was waiting in broken off, not when the next byte comes.
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS}), pace=(1, 5.0))
    started = time.monotonic()
    with pytest.raises(SpamtuneError, match=r" sent \d bytes in 0\.\d s; giving up \(a working link, however slow, sends 1,000 bytes in 0\.5 s"):
        fetch_data(root, source_for(url))
    assert time.monotonic() - started < 3
    assert list(paths.sms_file(root).parent.iterdir()) == []


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf", "nan"])
def test_a_bad_stall_window_is_one_error_before_any_request(server, root, monkeypatch, value):
    monkeypatch.setenv("SPAMTUNE_DOWNLOAD_STALL_S", value)
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS}))
    result = cli("download", "data", "--url", url, "--data-dir", str(root))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith("Error: SPAMTUNE_DOWNLOAD_STALL_S must be a ") and result.stderr.count("\n") == 1
    assert f"'{value}'" in result.stderr and server.requests == []


def test_a_slow_link_that_keeps_going_is_not_given_up_on(server, root, short_stall_window):
    archive = make_zip({"SMSSpamCollection": FAKE_SMS})
    url = server.add("/sms.zip", archive, pace=(5000, 0.05))  # about a second: two windows and more
    fetch_data(root, source_for(url))
    assert paths.sms_file(root).read_bytes() == FAKE_SMS and leftovers(root) == []


def test_a_redirect_to_anything_but_http_is_not_followed(server, root):
    # urllib follows a redirect to ftp:// by itself, logging in to whatever server it names.
    with socket.socket() as ftp:
        ftp.bind(("127.0.0.1", 0))
        ftp.listen(1)
        ftp.settimeout(0.2)
        location = f"ftp://127.0.0.1:{ftp.getsockname()[1]}/sms.zip"
        url = server.add("/sms.zip", status=302, headers={"Location": location})
        with pytest.raises(SpamtuneError) as err:
            fetch_data(root, source_for(url))
        with pytest.raises(TimeoutError):
            ftp.accept()  # nothing came
    assert str(err.value) == f"{url} redirects to {location}, not an http(s) URL; not followed"
    assert not root.exists() or list(paths.sms_file(root).parent.iterdir()) == []


def test_an_error_after_a_redirect_names_the_host_that_failed(server, root):
    """A mirror that sends the download to another host: the error named the mirror, which
    answered fine, as the host that could not be reached or answered 404."""
    gone = closed_port_url("/sms.zip").replace("127.0.0.1", "localhost")
    to_gone = server.add("/to-gone.zip", status=302, headers={"Location": gone})
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(to_gone))
    assert str(err.value).startswith(f"cannot reach localhost (redirected to {gone}): ")

    missing = server.url("/missing.zip").replace("127.0.0.1", "localhost")
    to_missing = server.add("/to-missing.zip", status=301, headers={"Location": missing})
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(to_missing))
    assert str(err.value) == f"localhost (redirected to {missing}) answered HTTP 404 Not Found for {to_missing}"
    assert not paths.sms_file(root).exists() and leftovers(root) == []


def test_a_redirect_loop_is_one_line(server, root):
    # urllib's reason for it runs over three lines, ending in the last redirect's status text.
    url = server.add("/loop.zip", status=302, headers={"Location": "/loop.zip"})
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(url))
    assert str(err.value) == (
        f"127.0.0.1 answered HTTP 302 The HTTP server returned a redirect error that would lead to an infinite loop "
        f"for {url}"
    )


@pytest.mark.parametrize("what", ["data", "model"])
def test_sigterm_during_the_download_leaves_nothing_and_exits_143(server, root, tiny_weights, monkeypatch, what):
    """`timeout` or a scheduler ends the download as Ctrl-C does: the temporary file, named at
    random and so never resumed, is not left beside the data or in the hub's cache."""
    import signal

    from spamtune.interrupts import forget_stop

    if what == "data":
        url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS}), pace=(5000, 0.05))
        args = ["download", "data", "--url", url, "--data-dir", str(root)]
        partial = lambda: list(paths.sms_file(root).parent.glob(".download.*"))  # noqa: E731
    else:
        serve_on_hub(server, tiny_weights, pace=(5000, 0.05))
        args = ["download", "model", "gpt2", "--endpoint", server.base_url]
        partial = lambda: [p for p in cache_files("blobs") if p.name.endswith(".incomplete")]  # noqa: E731
    add = download._StallGuard.add

    def add_then_sigterm(guard, size):
        add(guard, size)
        if size and partial():
            signal.raise_signal(signal.SIGTERM)

    class Ended(Exception):
        pass

    def ended(signum, frame):  # what the default action would do, short of ending pytest
        raise Ended

    monkeypatch.setattr(download._StallGuard, "add", add_then_sigterm)
    previous = signal.signal(signal.SIGTERM, ended)
    try:
        result = cli(*args)
    finally:
        signal.signal(signal.SIGTERM, previous)
        forget_stop()
    assert (result.exit_code, result.stdout, result.stderr.splitlines()[-1]) == (143, "", "Error: interrupted")
    assert partial() == [] and leftovers(root) == []


def test_a_body_announced_larger_than_the_cap_is_not_read(server, root, monkeypatch):
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 10_000)
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS}))
    received = []
    with pytest.raises(SpamtuneError, match=r"announces [\d,]+ bytes, more than the 0 MiB allowed: not the"):
        fetch_data(root, source_for(url), on_progress=lambda done, total: received.append(done))
    assert received == []
    assert list(paths.sms_file(root).parent.iterdir()) == []


def test_ctrl_c_during_the_download_leaves_nothing(server, root):
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS}))

    def interrupt_once_bytes_arrived(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch_data(root, source_for(url), on_progress=interrupt_once_bytes_arrived)
    assert list(paths.sms_file(root).parent.iterdir()) == []


def test_a_symlink_planted_where_the_download_goes_is_not_written_through(server, root, tmp_path):
    """The name the download once used was predictable; whatever it is now, links planted under
    old names are left alone and nothing lands outside the data root."""
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS}))
    folder = paths.sms_file(root).parent
    folder.mkdir(parents=True)
    planted = folder / f".sms.zip.{hashlib.sha256(url.encode()).hexdigest()[:10]}.part"
    planted.symlink_to(outside)
    seen = set()
    fetch_data(root, source_for(url), on_progress=lambda done, total: seen.update(leftovers(folder)))
    assert outside.read_bytes() == b"precious"
    assert paths.sms_file(root).read_bytes() == FAKE_SMS
    assert planted.is_symlink()
    assert [name for name in seen if name != planted.name], "the download went to a fresh file of its own"
    assert sorted(p.name for p in folder.iterdir()) == sorted([planted.name, "SMSSpamCollection"])


def corrupt_deflate_zip(data: bytes) -> bytes:
    """A zip whose directory is intact but whose compressed bytes are damaged midway."""
    archive = bytearray(make_zip({"SMSSpamCollection": data}, zipfile.ZIP_DEFLATED))
    middle = len(archive) // 2
    archive[middle : middle + 64] = bytes(64)
    return bytes(archive)


def test_a_corrupt_deflate_stream_is_a_corrupt_zip(server, root):
    url = server.add("/sms.zip", corrupt_deflate_zip(FAKE_SMS))
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(url))
    assert str(err.value).startswith(f"{url} is a corrupt zip file: SMSSpamCollection cannot be read (")
    assert str(err.value).endswith("; the download was removed")
    assert list(paths.sms_file(root).parent.iterdir()) == []


def test_404(server, root):
    url = server.url("/missing.zip")
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(url))
    assert str(err.value) == f"127.0.0.1 answered HTTP 404 Not Found for {url}"
    assert not paths.sms_file(root).exists() and leftovers(root) == []


def test_next_mirror_is_tried_after_a_failure(server, root):
    good = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS}))
    notes = []
    fetch_data(root, source_for(server.url("/gone.zip"), good), notify=notes.append)
    assert paths.sms_file(root).read_bytes() == FAKE_SMS
    assert notes == [f"trying the next mirror: {good}"]


def test_every_mirror_failing_names_each_failure(server, root):
    down = closed_port_url("/sms.zip")
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(server.url("/gone.zip"), down))
    message = str(err.value)
    assert message.startswith("could not download the SMS Spam Collection from any of 2 URLs: ")
    assert "HTTP 404" in message and "cannot reach 127.0.0.1: Connection refused" in message


def test_checksum_mismatch_removes_the_download(server, root):
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS.replace(b"ham", b"HAM")}))
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(url))
    assert "has sha256" in str(err.value) and f"expected {FAKE_SOURCE.sha256[:12]}" in str(err.value)
    assert str(err.value).endswith("the download was removed")
    assert not paths.sms_file(root).exists()
    assert leftovers(root) == [] and list(paths.sms_file(root).parent.iterdir()) == []


def test_wrong_size_is_refused_before_extracting(server, root):
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS * 50}))
    with pytest.raises(SpamtuneError, match=f"has {len(FAKE_SMS) * 50:,} bytes, expected {len(FAKE_SMS):,}"):
        fetch_data(root, source_for(url))
    assert not paths.sms_file(root).exists()


def test_the_bundled_copy_is_used_when_every_url_fails(tmp_path, root):
    bundled = tmp_path / "bundled"
    bundled.write_bytes(FAKE_SMS)
    down = closed_port_url("/sms.zip")
    result = fetch_data(root, source_for(down), fallback=bundled)
    assert (result.status, result.source) == ("bundled", str(bundled))
    assert result.fallback_reason == "cannot reach 127.0.0.1: Connection refused"  # no advice: it was taken
    assert paths.sms_file(root).read_bytes() == FAKE_SMS

    bundled.write_bytes(FAKE_SMS.replace(b"ham", b"HAM"))  # a tampered copy is refused like any source
    with pytest.raises(SpamtuneError, match="has sha256"):
        use_bundled_data(tmp_path / "other", FAKE_SOURCE, bundled)
    with pytest.raises(SpamtuneError) as err:
        use_bundled_data(tmp_path / "other", FAKE_SOURCE, tmp_path / "missing")
    assert str(err.value).startswith(f"no bundled SMS Spam Collection at {tmp_path / 'missing'}: it ships with")


def test_the_bundled_copy_is_the_published_file():
    assert BUNDLED_SMS_FILE.stat().st_size == DataSource().size
    assert sha256_file(BUNDLED_SMS_FILE) == SMS_SHA256


def test_unreachable_host(root):
    url = closed_port_url("/sms.zip")
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(url))
    assert str(err.value) == "cannot reach 127.0.0.1: Connection refused; use --from FILE or give a mirror with --url"


@pytest.mark.parametrize("evil", ["../SMSSpamCollection", "/etc/cron.d/evil", "a/../../b", "C:/evil", "..\\evil"])
def test_unsafe_zip_entry_is_refused(server, root, evil):
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS, evil: b"gotcha"}))
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(url))
    assert f"holds an unsafe entry '{evil}'" in str(err.value)
    assert not paths.sms_file(root).exists()
    assert not (root.parent / "SMSSpamCollection").exists() and not (root / "SMSSpamCollection").exists()


def test_zip_without_the_data_file(server, root):
    url = server.add("/sms.zip", make_zip({"readme": b"about", "other.txt": b"x"}))
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(url))
    assert str(err.value) == f"{url} holds no SMSSpamCollection (it holds: readme, other.txt); the download was removed"


def test_not_a_zip(server, root):
    url = server.add("/sms.zip", b"<html>a captive portal</html>")
    with pytest.raises(SpamtuneError, match="is not a readable zip file"):
        fetch_data(root, source_for(url))
    assert leftovers(root) == []


def test_disk_full_while_downloading_is_one_clear_error(server, root, fill_disk):
    url = server.add("/sms.zip", make_zip({"SMSSpamCollection": FAKE_SMS}))
    fill_disk()
    with pytest.raises(SpamtuneError) as err:
        fetch_data(root, source_for(url))
    assert str(err.value).startswith("disk full: cannot write ")
    assert str(err.value).endswith("; free some space and run again")
    assert not paths.sms_file(root).exists()


def test_disk_full_while_writing_the_data_file(tmp_path, root, fill_disk):
    tsv = tmp_path / "SMSSpamCollection"
    tsv.write_bytes(FAKE_SMS)
    fill_disk()
    with pytest.raises(SpamtuneError) as err:
        import_data(root, tsv, FAKE_SOURCE)
    assert str(err.value) == f"disk full: cannot write {paths.sms_file(root)}; free some space and run again"
    assert list(paths.sms_file(root).parent.iterdir()) == []  # no temporary file left either


def test_import_local_zip_and_tsv(tmp_path, root):
    tsv = tmp_path / "SMSSpamCollection"
    tsv.write_bytes(FAKE_SMS)
    assert import_data(root, tsv, FAKE_SOURCE).status == "imported"
    assert paths.sms_file(root).read_bytes() == FAKE_SMS

    other_root = tmp_path / "other"
    archive = tmp_path / "carried.zip"
    archive.write_bytes(make_zip({"smsspamcollection/SMSSpamCollection": FAKE_SMS}))
    assert import_data(other_root, archive, FAKE_SOURCE).path.read_bytes() == FAKE_SMS
    assert import_data(other_root, archive, FAKE_SOURCE).status == "present"


def test_import_wrong_file_leaves_it_alone(tmp_path, root):
    wrong = tmp_path / "notes.tsv"
    wrong.write_bytes(FAKE_SMS[:-1] + b"!")
    with pytest.raises(SpamtuneError, match="has sha256"):
        import_data(root, wrong, FAKE_SOURCE)
    assert wrong.is_file() and not paths.sms_file(root).exists()
    with pytest.raises(SpamtuneError, match="file not found"):
        import_data(root, tmp_path / "nope.zip", FAKE_SOURCE)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("folder", "{abs} is a directory, not a zip or SMSSpamCollection file"),
        ("/dev/zero", "/dev/zero is not a regular file (a device, pipe or socket), so not a zip or SMSSpamCollection file"),
        ("missing.zip", "zip or SMSSpamCollection file not found: {abs}"),
    ],
)
def test_cli_from_what_is_not_a_file_says_what_it_is(tmp_path, monkeypatch, root, given, expected):
    if given == "/dev/zero" and not Path(given).exists():
        pytest.skip("no /dev/zero here")
    (tmp_path / "folder").mkdir()
    monkeypatch.chdir(tmp_path)  # a relative path is shown absolute
    result = cli("download", "data", "--from", given, "--data-dir", str(root))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "Error: " + expected.format(abs=tmp_path / given) + "\n"


def test_mirror_list_from_options_then_environment(monkeypatch):
    assert data_urls(["http://a/x.zip"]) == ("http://a/x.zip",)
    monkeypatch.setenv("SPAMTUNE_DATA_URLS", "http://m1/x.zip, http://m2/x.zip,")
    assert data_urls([]) == ("http://m1/x.zip", "http://m2/x.zip")
    monkeypatch.delenv("SPAMTUNE_DATA_URLS")
    assert data_urls([]) == DataSource().urls
    with pytest.raises(SpamtuneError, match="not an http"):
        data_urls(["/tmp/x.zip"])
    for bad in ("http://[::1/x.zip", "http://127.0.0.1:99999/x.zip"):
        with pytest.raises(SpamtuneError, match=re.escape(f"not a valid URL: '{bad}' (")):
            data_urls([bad])


# --------------------------------------------------------------------------- data, CLI


@pytest.fixture
def real_sms_zip(sms_file) -> bytes:
    return make_zip({"SMSSpamCollection": sms_file.read_bytes(), "readme": b"UCI readme"}, zipfile.ZIP_DEFLATED)


def test_cli_download_data_and_skip(server, root, real_sms_zip):
    url = server.add("/sms+spam+collection.zip", real_sms_zip)
    first = cli("download", "data", "--url", url, "--data-dir", str(root))
    assert first.exit_code == 0, first.stderr
    assert first.stdout == f"{paths.sms_file(root)}\n"
    assert "verified" in first.stderr
    assert len(paths.sms_file(root).read_bytes().splitlines()) == 5574

    again = cli("download", "data", "--url", url, "--data-dir", str(root))
    assert again.exit_code == 0 and again.stdout == first.stdout
    assert "already there and verified" in again.stderr
    assert len(server.requests_for("/sms+spam+collection.zip")) == 1


def test_cli_download_data_from_env_mirrors_and_from_file(server, tmp_path, real_sms_zip, sms_file):
    url = server.add("/mirror.zip", real_sms_zip)
    result = cli("download", "data", "--data-dir", str(tmp_path / "a"), SPAMTUNE_DATA_URLS=f"{server.url('/x')},{url}")
    assert result.exit_code == 0, result.stderr
    assert "trying the next mirror" in result.stderr

    imported = cli("download", "data", "--from", str(sms_file), "--data-dir", str(tmp_path / "b"))
    assert imported.exit_code == 0, imported.stderr
    assert imported.stdout.strip() == str(paths.sms_file(tmp_path / "b"))


def test_cli_falls_back_to_the_bundled_copy_when_uci_cannot_be_reached(root, monkeypatch):
    monkeypatch.delenv("SPAMTUNE_DATA_URLS")  # the default source: UCI, which no test may reach
    result = cli("download", "data", "--data-dir", str(root))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{paths.sms_file(root)}\n"
    assert result.stderr == (
        "SMS Spam Collection: the download failed (cannot reach archive.ics.uci.edu: a test tried to reach "
        f"archive.ics.uci.edu), so the bundled copy {BUNDLED_SMS_FILE} was used; sha256 verified\n"
    )
    assert paths.sms_file(root).read_bytes() == BUNDLED_SMS_FILE.read_bytes()


def test_cli_bundled_asks_no_server_and_named_mirrors_do_not_fall_back(server, root):
    result = cli("download", "data", "--bundled", "--data-dir", str(root))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"SMS Spam Collection: the bundled copy {BUNDLED_SMS_FILE} was used; sha256 verified\n"
    assert paths.sms_file(root).read_bytes() == BUNDLED_SMS_FILE.read_bytes()

    elsewhere = root.parent / "elsewhere"
    result = cli("download", "data", "--url", server.url("/gone.zip"), "--data-dir", str(elsewhere))
    assert (result.exit_code, result.stdout) == (1, "")
    assert not paths.sms_file(elsewhere).exists()


def test_cli_corrupt_zip_is_one_line(tmp_path, root, sms_file):
    broken = tmp_path / "sms.zip"
    broken.write_bytes(corrupt_deflate_zip(sms_file.read_bytes()))
    result = cli("download", "data", "--from", str(broken), "--data-dir", str(root))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith(f"Error: {broken} is a corrupt zip file: SMSSpamCollection cannot be read (")
    assert result.stderr.count("\n") == 1
    assert list(paths.sms_file(root).parent.iterdir()) == []


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({"SMSSpamCollection": FAKE_SMS}, "SMSSpamCollection from {url} has {n:,} bytes, expected 477,907"),
        ({"readme": b"x"}, "{url} holds no SMSSpamCollection (it holds: readme)"),
        (
            {"../../etc/passwd": b"x"},
            "{url} holds an unsafe entry '../../etc/passwd' (absolute path or '..'); refusing to extract it",
        ),
    ],
)
def test_cli_data_errors_are_one_line(server, root, entries, expected):
    url = server.add("/sms.zip", make_zip(entries))
    result = cli("download", "data", "--url", url, "--data-dir", str(root))
    assert (result.exit_code, result.stdout) == (1, "")
    message = expected.format(url=url, n=len(FAKE_SMS))
    assert result.stderr == f"Error: {message}; the download was removed\n"
    assert leftovers(root) == []


def test_cli_data_unreachable_and_404(server, root):
    down = closed_port_url("/sms.zip")
    result = cli("download", "data", "--url", down, "--data-dir", str(root))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: cannot reach 127.0.0.1: Connection refused; use --from FILE or give a mirror with --url\n"
    )

    result = cli("download", "data", "--url", server.url("/nope.zip"), "--data-dir", str(root))
    assert result.stderr == f"Error: 127.0.0.1 answered HTTP 404 Not Found for {server.url('/nope.zip')}\n"


def test_an_answer_that_is_no_http_is_not_called_unreachable(server, root):
    # 150 header lines: http.client stops at 100. The server was reached; its answer is the fault.
    url = server.add("/sms.zip", b"x", headers={f"X-Padding-{i}": "a" for i in range(150)})
    result = cli("download", "data", "--url", url, "--data-dir", str(root))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: 127.0.0.1 sent no valid HTTP answer for {url} (got more than 100 headers)\n"


def test_cli_data_usage_errors(tmp_path):
    result = cli("download", "data", "--url", "http://127.0.0.1:9/x", "--from", str(tmp_path))
    assert result.exit_code == 2 and result.stderr == "Error: --url and --from exclude each other\n"
    result = cli("download", "data", "--bundled", "--from", str(tmp_path))
    assert result.exit_code == 2 and result.stderr == "Error: --from and --bundled exclude each other\n"
    result = cli("download", "data", "--url", "ftp://example.org/x.zip", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: not an http(s) URL: 'ftp://example.org/x.zip'")


# --------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    write_hf_gpt2(path, emb_dim=TINY.emb_dim, n_layers=TINY.n_layers, context=TINY.context_length, buffers=True)
    return path.read_bytes()


def serve_on_hub(
    hub: LoopbackServer, data: bytes, *, sha256: str | None = None, cdn: LoopbackServer | None = None, script=(),
    pace: tuple[int, float] | None = None,
):
    """Answer HEAD/GET on the resolve URL as the hub does for an LFS file: the sha256 as (linked)
    ETag, the commit in X-Repo-Commit; with ``cdn``, a redirect to the bytes on another host."""
    sha256 = sha256 or hashlib.sha256(data).hexdigest()
    meta = {"X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))}
    if cdn is None:
        hub.add(RESOLVE, data, headers={**meta, "ETag": f'"{sha256}"'}, script=list(script), pace=pace)
    else:
        location = cdn.add(f"/blobs/{sha256}", data, script=list(script))
        hub.add(RESOLVE, status=302, headers={**meta, "ETag": '"0b1f1a1e"', "Location": location})


def cache_files(kind: str) -> list[Path]:
    folder = Path(hf_constants.HF_HUB_CACHE) / "models--openai-community--gpt2" / kind
    return sorted(folder.rglob("*")) if folder.is_dir() else []


def test_a_trickling_hub_is_given_up_on_and_the_next_download_starts_clean(server, tiny_weights, monkeypatch):
    # The hub client's own timeout is per read: a byte every 0.1 s would never reach it.
    monkeypatch.setenv("SPAMTUNE_DOWNLOAD_STALL_S", "0.5")
    serve_on_hub(server, tiny_weights, pace=(1, 0.1))
    hooks_before = list(hf_http.get_session().event_hooks["response"])
    started = time.monotonic()
    result = cli("download", "model", "gpt2", "--endpoint", server.base_url)
    assert time.monotonic() - started < 5
    assert (result.exit_code, result.stdout) == (1, "")
    assert re.fullmatch(
        rf"Error: {re.escape(server.url(RESOLVE))} sent \d bytes in 0\.\d s; giving up \(a working link, however "
        r"slow, sends 137 bytes in 0\.5 s; SPAMTUNE_DOWNLOAD_STALL_S=SECONDS allows a longer window\)",
        result.stderr.splitlines()[-1],
    ), result.stderr
    # Nothing under the final name, no partial blob (the hub's client removes its own).
    assert [p for p in cache_files("snapshots") if p.is_file() or p.is_symlink()] == []
    assert cache_files("blobs") == []
    assert hf_http.get_session().event_hooks["response"] == hooks_before  # the shared client as it was

    serve_on_hub(server, tiny_weights)
    result = download_model("gpt2", config=TINY, endpoint=server.base_url)
    assert result.path.read_bytes() == tiny_weights and result.status == "downloaded"


def test_model_download_checks_sha_and_shapes(server, tiny_weights):
    serve_on_hub(server, tiny_weights)
    result = download_model("gpt2", config=TINY, endpoint=server.base_url)
    assert result.status == "downloaded"
    assert result.path.read_bytes() == tiny_weights
    snapshot = Path(hf_constants.HF_HUB_CACHE, "models--openai-community--gpt2", "snapshots", COMMIT)
    assert result.path == snapshot / "model.safetensors"
    assert [(r.method, r.path) for r in server.requests] == [("HEAD", RESOLVE), ("GET", RESOLVE)]
    assert paths.find_pretrained_weights(Path("unused"), "gpt2-small") == result.path
    assert leftovers(Path(hf_constants.HF_HUB_CACHE)) == []


def test_model_already_cached_is_not_fetched_again(server, tiny_weights):
    serve_on_hub(server, tiny_weights)
    download_model("124M", config=TINY, endpoint=server.base_url)
    again = download_model("gpt2-small", config=TINY, endpoint=server.base_url)
    assert again.status == "present"
    assert len(server.requests_for(RESOLVE, "GET")) == 1


def test_model_via_cdn_redirect(server, tiny_weights):
    with LoopbackServer() as cdn:
        serve_on_hub(server, tiny_weights, cdn=cdn)
        result = download_model("gpt2", config=TINY, endpoint=server.base_url)
        assert result.path.read_bytes() == tiny_weights
        assert server.requests_for(RESOLVE, "GET") == []
        assert len(cdn.requests_for(f"/blobs/{hashlib.sha256(tiny_weights).hexdigest()}")) == 1


def test_model_download_resumes_after_a_dropped_connection(server, tiny_weights, monkeypatch):
    # huggingface_hub keeps what it received in 10 MB chunks; this file is smaller than one.
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)
    serve_on_hub(server, tiny_weights, script=["drop"])
    result = download_model("gpt2", config=TINY, endpoint=server.base_url)
    gets = server.requests_for(RESOLVE)
    assert len(gets) == 2 and "range" not in gets[0].headers
    resumed_at = int(gets[1].headers["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= len(tiny_weights) // 2  # from the last whole chunk it kept
    assert result.path.read_bytes() == tiny_weights


def test_model_in_a_cache_without_symlinks_is_checked_against_the_hub(server, tiny_weights, monkeypatch):
    monkeypatch.setattr(hf_file_download, "are_symlinks_supported", lambda *args: False)  # as on Windows
    serve_on_hub(server, tiny_weights)
    result = download_model("gpt2", config=TINY, endpoint=server.base_url)
    assert not result.path.is_symlink() and result.path.read_bytes() == tiny_weights
    assert [r.method for r in server.requests] == ["HEAD", "GET", "HEAD"]  # the last one for the sha256
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SpamtuneError, match="cannot be checked offline; unset HF_HUB_OFFLINE"):
        download_model("gpt2", config=TINY, endpoint=server.base_url)


@pytest.mark.parametrize("symlinks", [True, False])
def test_model_checksum_mismatch_removes_the_file(server, tiny_weights, monkeypatch, symlinks):
    if not symlinks:
        monkeypatch.setattr(hf_file_download, "are_symlinks_supported", lambda *args: False)
    serve_on_hub(server, tiny_weights, sha256="ab" * 32)
    with pytest.raises(SpamtuneError) as err:
        download_model("gpt2", config=TINY, endpoint=server.base_url)
    actual = hashlib.sha256(tiny_weights).hexdigest()
    assert str(err.value) == (
        f"{REPO}/model.safetensors has sha256 {actual[:12]}... but the hub lists abababababab...; "
        "the bad file was removed, run the command again"
    )
    assert [p for p in cache_files("blobs") + cache_files("snapshots") if p.is_file()] == []
    assert paths.find_pretrained_weights(Path("unused"), "gpt2-small") is None


def test_model_shapes_are_checked_against_the_named_size(server, tiny_weights):
    serve_on_hub(server, tiny_weights)
    with pytest.raises(SpamtuneError, match=r"holds a 32-dim, 2-layer model .* but gpt2-small was requested"):
        download_model("gpt2-small", endpoint=server.base_url)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Error-Code": "RepoNotFound"}, "{hub} has no repository openai-community/gpt2 (HTTP 404)"),
        ({"X-Error-Code": "EntryNotFound"}, "openai-community/gpt2 on {hub} has no model.safetensors (HTTP 404)"),
    ],
)
def test_model_404(server, headers, expected):
    server.add(RESOLVE, status=404, headers=headers)
    with pytest.raises(SpamtuneError) as err:
        download_model("gpt2", config=TINY, endpoint=server.base_url)
    assert str(err.value) == expected.format(hub=server.base_url)


def test_model_endpoint_that_is_not_a_hub(server):
    with pytest.raises(SpamtuneError) as err:
        download_model("gpt2", config=TINY, endpoint=server.base_url)  # plain 404, no hub headers
    assert str(err.value) == f"127.0.0.1 answered HTTP 404 Not Found for {server.url(RESOLVE)}"


def test_model_unreachable_host():
    endpoint = closed_port_url().rstrip("/")
    with pytest.raises(SpamtuneError) as err:
        download_model("gpt2", config=TINY, endpoint=endpoint)
    assert str(err.value) == "cannot reach 127.0.0.1: Connection refused; use --from FILE or set HF_ENDPOINT"


def test_model_offline_uses_the_cache_or_says_why_not(server, tiny_weights, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SpamtuneError) as err:
        download_model("gpt2", config=TINY, endpoint=server.base_url)
    assert str(err.value) == (
        f"HF_HUB_OFFLINE is set and gpt2-small (openai-community/gpt2) is not in the Hugging Face cache "
        f"({hf_constants.HF_HUB_CACHE}); unset HF_HUB_OFFLINE to download it, or use --from FILE"
    )
    assert server.requests == []

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    serve_on_hub(server, tiny_weights)
    online = download_model("gpt2", config=TINY, endpoint=server.base_url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    offline = download_model("gpt2", config=TINY, endpoint=server.base_url)
    assert (offline.path, offline.status) == (online.path, "present")


def test_model_disk_full(server, tiny_weights, fill_disk):
    serve_on_hub(server, tiny_weights)
    fill_disk()
    with pytest.raises(SpamtuneError) as err:
        download_model("gpt2", config=TINY, endpoint=server.base_url)
    assert str(err.value).startswith("disk full: cannot write to the Hugging Face cache ")
    assert leftovers(Path(hf_constants.HF_HUB_CACHE)) == []


def test_hub_reachability_is_one_quick_question(server, monkeypatch):
    assert hub_unreachable(server.base_url) is None  # a 404 is an answer: the host is there
    assert [(r.method, r.path) for r in server.requests] == [("HEAD", f"/api/models/{REPO}")]
    monkeypatch.setenv("HF_ENDPOINT", server.base_url)
    assert hub_unreachable() is None
    assert hub_unreachable(closed_port_url().rstrip("/")) == "cannot reach 127.0.0.1: Connection refused"
    monkeypatch.delenv("HF_ENDPOINT")
    monkeypatch.setattr(hf_constants, "ENDPOINT", "https://huggingface.co")
    assert hub_unreachable() == "cannot reach huggingface.co: a test tried to reach huggingface.co"
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert hub_unreachable(server.base_url) == "HF_HUB_OFFLINE is set"
    assert len(server.requests) == 2


@pytest.mark.parametrize("name", ["tiny", "gpt3", "my_config.json"])
def test_names_that_cannot_be_downloaded(name):
    with pytest.raises(SpamtuneError) as err:
        download_model(name, endpoint=closed_port_url())
    assert "choose one of: gpt2-small, gpt2-medium, gpt2-large, gpt2-xl" in str(err.value)


def test_model_import_from_file(tmp_path, root, tiny_weights):
    source = tmp_path / "carried.safetensors"
    source.write_bytes(tiny_weights)
    result = import_model(root, "gpt2", source, config=TINY)
    assert result.path == paths.imported_weights_file(root, "gpt2-small")
    assert result.path.read_bytes() == tiny_weights
    assert paths.find_pretrained_weights(root, "gpt2-small") == result.path

    with pytest.raises(SpamtuneError, match="but gpt2-medium was requested"):
        import_model(root, "gpt2-medium", source)
    assert not paths.imported_weights_file(root, "gpt2-medium").exists()
    with pytest.raises(SpamtuneError, match="weights file not found"):
        import_model(root, "gpt2", tmp_path / "missing.safetensors", config=TINY)


@pytest.mark.parametrize(
    "tensors, expected",
    [
        ({"wte.weight": (4,), "wpe.weight": (2, 4)}, r"'wte.weight' has shape \[4\], not 2-D"),
        ({"wte.weight": (4, 4), "wpe.weight": ()}, r"'wpe.weight' has shape \[\], not 2-D"),
        ({"wte.weight": (4, 4), "wpe.weight": (2, 4), "h.x.ln_1.weight": (4,)}, "no h.0.* weights"),
        ({"wte.weight": (4, 0), "wpe.weight": (2, 0), "h.0.ln_1.weight": (0,)}, "emb_dim must be a positive integer"),
    ],
)
def test_model_import_of_a_file_shaped_like_no_gpt2_is_one_error(tmp_path, root, tensors, expected):
    """A carried-over file is anyone's: embeddings that are not matrices, or a block that is not
    numbered, failed with an unexpected ValueError or IndexError while its shapes were read."""
    source = tmp_path / "odd.safetensors"
    save_file({key: torch.zeros(shape) for key, shape in tensors.items()}, str(source))
    with pytest.raises(SpamtuneError, match=f"^{re.escape(str(source))} is not a GPT-2 weights file: .*{expected}"):
        import_model(root, "gpt2", source, config=TINY)
    assert not paths.imported_weights_file(root, "gpt2-small").exists()


# --------------------------------------------------------------------------- model and everything, CLI


@pytest.fixture
def tiny_gpt2_small(monkeypatch):
    """Make the name gpt2-small stand for the tiny shape, as if the hub's file were that small."""
    monkeypatch.setitem(model.MODEL_SIZES, "gpt2-small", TINY)


def test_cli_download_model(server, tiny_weights, tiny_gpt2_small):
    serve_on_hub(server, tiny_weights)
    result = cli("download", "model", "gpt2", "--endpoint", server.base_url)
    assert result.exit_code == 0, result.stderr
    path = Path(result.stdout.strip())
    assert result.stdout == f"{path}\n" and path.read_bytes() == tiny_weights
    assert "gpt2-small downloaded; sha256 and shapes verified" in result.stderr
    assert "%|" not in result.stderr  # no progress bar: stderr is not a terminal

    again = cli("download", "model", "gpt2-small", HF_ENDPOINT=server.base_url)  # the variable, as HF reads it
    assert again.exit_code == 0 and again.stdout == result.stdout
    assert "already in the Hugging Face cache" in again.stderr


def test_cli_download_model_from_file(tmp_path, root, tiny_weights, tiny_gpt2_small):
    source = tmp_path / "model.safetensors"
    source.write_bytes(tiny_weights)
    result = cli("download", "model", "124M", "--from", str(source), "--data-dir", str(root))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{paths.imported_weights_file(root, 'gpt2-small')}\n"


def test_cli_prints_the_paths_under_a_data_root_with_control_characters_escaped_on_one_line(tmp_path, tiny_weights, tiny_gpt2_small):
    """The written paths went to stdout, and the notes naming them to stderr, as they were: a data
    root named with an escape sequence and a line break drove the terminal and made two lines of
    each path, and one with a byte that is no UTF-8 failed the output. Each is one escaped line."""
    root = tmp_path / (os.fsdecode(b"x\xff") + "\x1b]0;x\x07\nroot")
    shown = f"{tmp_path}/x\\udcff\\x1b]0;x\\x07\\nroot"
    data = cli("download", "data", "--bundled", "--data-dir", str(root))
    assert data.exit_code == 0, data.stderr
    assert data.stdout == f"{shown}/sms_spam_collection/SMSSpamCollection\n"
    again = cli("download", "data", "--bundled", "--data-dir", str(root))
    assert again.exit_code == 0 and again.stdout == data.stdout
    assert again.stderr.startswith(f"{shown}/sms_spam_collection/SMSSpamCollection is already there and verified (sha256 ")
    assert len(again.stderr.splitlines()) == 1

    # safetensors opens a file by its UTF-8 path: weights go where every byte is UTF-8.
    root, shown = tmp_path / "\x1b]0;x\x07\nroot", f"{tmp_path}/\\x1b]0;x\\x07\\nroot"
    source = tmp_path / "\x1b[1mmodel.safetensors"
    source.write_bytes(tiny_weights)
    weights = cli("download", "model", "124M", "--from", str(source), "--data-dir", str(root))
    assert weights.exit_code == 0, weights.stderr
    assert weights.stdout == f"{shown}/models/gpt2-small/model.safetensors\n"
    assert weights.stderr == f"{tmp_path}/\\x1b[1mmodel.safetensors imported: shapes match gpt2-small\n"
    assert paths.imported_weights_file(root, "gpt2-small").read_bytes() == tiny_weights


def test_cli_download_everything(server, tmp_path, root, tiny_weights, tiny_gpt2_small, real_sms_zip):
    serve_on_hub(server, tiny_weights)
    url = server.add("/sms.zip", real_sms_zip)
    result = cli("download", "--data-dir", str(root), SPAMTUNE_DATA_URLS=url, HF_ENDPOINT=server.base_url)
    assert result.exit_code == 0, result.stderr
    data_line, model_line = result.stdout.splitlines()
    assert data_line == str(paths.sms_file(root))
    assert Path(model_line).read_bytes() == tiny_weights


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tiny"], "Error: 'tiny' is not a released GPT-2 checkpoint, so there is nothing to download; choose one of: "
         "gpt2-small, gpt2-medium, gpt2-large, gpt2-xl (or gpt2, 124M, 355M, 774M, 1558M)"),
        (["gpt5"], "Error: unknown model 'gpt5'; choose one of: gpt2-small, gpt2-medium, gpt2-large, gpt2-xl "
         "(or gpt2, 124M, 355M, 774M, 1558M)"),
    ],
)
def test_cli_model_name_errors(args, expected):
    """A size that is not one of the choices is a usage error (exit 2), like every invalid value."""
    result = cli("download", "model", *args)
    usage = expected.replace("Error: ", "Error: Invalid value for 'NAME': ") + " (see 'spamtune download model --help')"
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", usage + "\n")


def test_cli_model_unreachable_is_one_error_line():
    endpoint = closed_port_url().rstrip("/")
    result = cli("download", "model", "gpt2-medium", "--endpoint", endpoint)
    assert (result.exit_code, result.stdout) == (1, "")
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert error_lines == ["Error: cannot reach 127.0.0.1: Connection refused; use --from FILE or set HF_ENDPOINT"]
    assert result.stderr.splitlines()[-1] == error_lines[0]
