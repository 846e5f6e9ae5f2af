"""Fetching what training needs: the SMS Spam Collection and OpenAI's GPT-2 weights.

The data comes from UCI as a zip over plain HTTP(S) (urllib, so ``HTTPS_PROXY``/``NO_PROXY``
work as usual). A download lands in a private temporary file beside its destination (created
exclusively under a random name, so nothing planted there is written through), capped at
``MAX_DOWNLOAD_BYTES``, and a dropped connection resumes with an HTTP ``Range`` request; the
one member we need is then extracted and checked against the published sha256 before it takes
its final name. The temporary file is removed whatever happens: success, error or Ctrl-C.
When the default source cannot give the file, the copy bundled in the source repository's
``data/`` folder (the same bytes, checked the same way) is used instead.

The weights go through ``huggingface_hub`` so that ``HF_HOME``, the shared cache,
``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` mirrors behave as in every other Hugging Face tool.
The file is then checked against the sha256 the hub published for it (its ETag) and opened
to check its shapes against the requested size.

Nothing here prints: progress and notes go to the callbacks the caller passes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import re
import shutil
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, NoReturn
from urllib.parse import urlsplit

from spamtune import __version__, paths
from spamtune.errors import SpamtuneError
from spamtune.fsutil import atomic_path, scratch_file

if TYPE_CHECKING:
    from spamtune.model import GPTConfig

Progress = Callable[[int, "int | None"], None]  # (bytes done, total bytes or None)
Notify = Callable[[str], None]

# UCI dataset 228, "SMS Spam Collection" v.1: the file and the figures it is known by.
SMS_URLS = ("https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",)
SMS_MEMBER = "SMSSpamCollection"
SMS_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SMS_SIZE = 477_907
ENV_DATA_URLS = "SPAMTUNE_DATA_URLS"  # comma-separated mirrors, tried in order

# The copy shipped in the source repository (a clone, or an editable install of one); a wheel
# installed from an index does not carry it.
BUNDLED_SMS_FILE = paths.sms_file(Path(__file__).resolve().parents[1] / "data")

CHUNK = 1 << 16
HTTP_TIMEOUT_S = 30  # for each read: a server that sends a byte now and then never reaches it
# So a download also has to bring MIN_BYTES_PER_WINDOW in every STALL_WINDOW_S, or it is given
# up on. 16 KiB a minute is about 2 kbit/s, a tenth of the slowest GPRS link (20-40 kbit/s):
# a bad mobile connection passes with room to spare, and takes at worst some 12 minutes for
# the 200 kB zip; a trickle that would keep the command running for days stops in a minute.
# The first window counts from the first request, and so is also the grace for connecting and
# for the response's headers, which a server can trickle as well as its body.
MIN_BYTES_PER_WINDOW = 16 << 10
STALL_WINDOW_S = 60.0
# The window, in seconds, for a link known to pause longer (or a test that cannot wait a
# minute); the bytes it must bring scale with it, so the floor stays the same rate.
ENV_STALL_WINDOW = "SPAMTUNE_DOWNLOAD_STALL_S"
# A dropped connection is retried at once, from where it stopped, as long as each attempt
# brings new bytes.
MAX_ATTEMPTS_PER_URL = 5
# The UCI zip is about 200 kB. A body a hundred times larger is not it (an endless stream, a
# wrong URL, a hostile mirror) and is cut off there rather than filling the disk.
MAX_DOWNLOAD_BYTES = 20 << 20


@dataclass(frozen=True)
class DataSource:
    """Where the SMS Spam Collection comes from and what it must hash to."""

    urls: tuple[str, ...] = SMS_URLS
    sha256: str = SMS_SHA256
    size: int = SMS_SIZE
    member: str = SMS_MEMBER


@dataclass(frozen=True)
class Fetched:
    """A file in place: ``status`` is ``downloaded``, ``imported``, ``bundled`` (the repository's
    copy) or ``present`` (nothing to do). ``source`` is the URL or file it came from;
    ``fallback_reason`` says why the bundled copy was used when the download was asked for."""

    path: Path
    status: str
    source: str = ""
    fallback_reason: str = ""


class _SourceError(SpamtuneError):
    """This URL or file cannot give the data (unreachable, HTTP error, wrong content): try the next.

    ``reason`` is the message without the advice that ends it, for when the bundled copy is
    used instead and the advice no longer applies."""

    def __init__(self, reason: str, advice: str = "") -> None:
        super().__init__(reason + advice)
        self.reason = reason


# --------------------------------------------------------------------------- shared helpers


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_error(path: Path, exc: OSError) -> SpamtuneError:
    if exc.errno == errno.ENOSPC:
        return SpamtuneError(f"disk full: cannot write {path}; free some space and run again")
    return SpamtuneError(f"cannot write {path}: {exc.strerror or exc}")


def _regular_file(file: str | Path, what: str) -> Path:
    """``file`` as an absolute path, if it is a regular file (or a link to one) that can be read."""
    absolute = Path(os.path.abspath(file))
    try:
        mode = absolute.stat().st_mode
    except FileNotFoundError:
        raise SpamtuneError(f"{what} not found: {absolute}") from None
    except OSError as exc:
        raise SpamtuneError(f"cannot read {absolute}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise SpamtuneError(f"{absolute} is a directory, not a {what}")
    if not stat.S_ISREG(mode):
        raise SpamtuneError(f"{absolute} is not a regular file (a device, pipe or socket), so not a {what}")
    return absolute


def _reason(exc: BaseException | str) -> str:
    """``[Errno 111] Connection refused`` -> ``Connection refused``; other errors as they print."""
    text = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
    return re.sub(r"^\[Errno -?\d+\] ", "", text.splitlines()[0])


# --------------------------------------------------------------------------- the SMS data


def data_urls(cli_urls: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """The mirror list: ``--url`` values, else ``$SPAMTUNE_DATA_URLS``, else UCI."""
    urls = tuple(cli_urls) or tuple(u.strip() for u in os.environ.get(ENV_DATA_URLS, "").split(",") if u.strip())
    for url in urls:
        try:
            urlsplit(url).port  # also parses the host: "http://[::1/x" raises here, not mid-download
        except ValueError as exc:
            raise SpamtuneError(f"not a valid URL: '{url}' ({exc})") from None
        if urlsplit(url).scheme not in ("http", "https"):
            raise SpamtuneError(f"not an http(s) URL: '{url}' (use --from for a local file)")
    return urls or SMS_URLS


def fetch_data(
    root: Path,
    source: DataSource = DataSource(),
    *,
    fallback: Path | None = None,
    on_progress: Progress | None = None,
    notify: Notify | None = None,
) -> Fetched:
    """Put a verified SMS Spam Collection at ``paths.sms_file(root)``, downloading only if needed.

    Each URL is tried in order; one that fails (unreachable, HTTP error, not the right zip)
    leaves the next one to try, and the error says what went wrong with each. If all fail and
    ``fallback`` names a local copy (the bundled one), that copy is checked and used instead.
    """
    notify = notify or (lambda _msg: None)
    target = paths.sms_file(root)
    if _already_verified(target, source, notify):
        return Fetched(target, "present", str(target))
    failures: list[_SourceError] = []
    for url in source.urls:
        if failures:
            notify(f"trying the next mirror: {url}")
        try:
            _download_and_extract(url, target, source, on_progress, notify)
            return Fetched(target, "downloaded", url)
        except _SourceError as exc:
            failures.append(exc)
    if fallback is not None and fallback.is_file():
        reason = "; ".join(f.reason for f in failures)
        return use_bundled_data(root, source, fallback, notify, fallback_reason=reason)
    if len(failures) == 1:
        raise SpamtuneError(str(failures[0]))
    raise SpamtuneError(
        f"could not download the SMS Spam Collection from any of {len(failures)} URLs: "
        + "; ".join(map(str, failures))
    )


def import_data(
    root: Path, file: str | Path, source: DataSource = DataSource(), notify: Notify | None = None
) -> Fetched:
    """Put the SMS Spam Collection in place from a local zip or the raw tab-separated file."""
    notify = notify or (lambda _msg: None)
    file = _regular_file(file, "zip or SMSSpamCollection file")
    target = paths.sms_file(root)
    if _already_verified(target, source, notify):
        return Fetched(target, "present", str(target))
    try:
        if zipfile.is_zipfile(file):
            _extract_verified(file, str(file), target, source)
        else:
            _check_size(file.stat().st_size, str(file), source)
            with file.open("rb") as stream:
                _write_verified(stream, str(file), target, source)
    except OSError as exc:
        raise SpamtuneError(f"cannot read {file}: {exc.strerror or exc}") from None
    return Fetched(target, "imported", str(file))


def use_bundled_data(
    root: Path,
    source: DataSource = DataSource(),
    bundled: Path = BUNDLED_SMS_FILE,
    notify: Notify | None = None,
    *,
    fallback_reason: str = "",
) -> Fetched:
    """Put the SMS Spam Collection in place from the copy shipped in the source repository,
    after checking its sha256 like any other source."""
    if not bundled.is_file():
        raise SpamtuneError(
            f"no bundled SMS Spam Collection at {bundled}: it ships with the source repository, "
            "not with an installed package; download it or import a copy"
        )
    fetched = import_data(root, bundled, source, notify)
    status = "present" if fetched.status == "present" else "bundled"
    return Fetched(fetched.path, status, str(bundled), fallback_reason)


def _already_verified(target: Path, source: DataSource, notify: Notify) -> bool:
    if not target.is_file():
        return False
    if target.stat().st_size == source.size and sha256_file(target) == source.sha256:
        notify(f"{target} is already there and verified (sha256 {source.sha256[:12]}...); nothing to download")
        return True
    notify(f"{target} does not match the expected sha256; fetching it again")
    return False


def _download_and_extract(
    url: str, target: Path, source: DataSource, on_progress: Progress | None, notify: Notify
) -> None:
    # A fixed stem: a name taken from the URL could carry an encoded "/" or "..".
    with scratch_file(target.parent, "download") as part:
        try:
            _download(url, part, on_progress, notify)
        except OSError as exc:  # writing what arrived; network errors are handled inside
            raise _write_error(target.parent, exc) from None
        try:
            _extract_verified(part, url, target, source)
        except _SourceError as exc:
            raise _SourceError(f"{exc}; the download was removed") from None


def _download(url: str, part: BinaryIO, on_progress: Progress | None, notify: Notify) -> None:
    """Fill ``part`` with the whole body of ``url``, resuming after a dropped connection."""
    guard = _StallGuard(url, stall_window_s())  # over every attempt: reconnecting does not reset it
    with guard.watching():
        _download_guarded(url, part, on_progress, notify, guard)


def _download_guarded(
    url: str, part: BinaryIO, on_progress: Progress | None, notify: Notify, guard: _StallGuard
) -> None:
    redirects = _HttpOnlyRedirectHandler()
    # Built per call so proxy variables are read now; its connections are handed to the guard,
    # which closes one that stalls whatever it is waiting for (headers or body).
    opener = urllib.request.build_opener(_GuardedHTTPHandler(guard), _GuardedHTTPSHandler(guard), redirects)
    total = None
    for _ in range(MAX_ATTEMPTS_PER_URL):
        have = part.seek(0, os.SEEK_END)
        headers = {"User-Agent": f"spamtune/{__version__}"}
        if have:
            headers["Range"] = f"bytes={have}-"
            notify(f"resuming {url} at byte {have:,}")
        redirects.start(url)
        try:
            response = opener.open(urllib.request.Request(url, headers=headers), timeout=HTTP_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # what we hold no longer fits what the server has
                _start_over(part)
                continue
            # The reason of a redirect loop runs over three lines: its first says what happened.
            reason = _reason(str(exc.reason)).rstrip(".")
            raise _SourceError(f"{redirects.host()} answered HTTP {exc.code} {reason} for {url}") from None
        except http.client.HTTPException as exc:  # reached, but what came back is no HTTP answer
            guard.raise_if_stalled()  # the guard closed the connection: say why, not how it ended
            raise _SourceError(f"{redirects.host()} sent no valid HTTP answer for {url} ({_reason(exc)})") from None
        except (urllib.error.URLError, OSError) as exc:
            guard.raise_if_stalled()
            reason = _reason(getattr(exc, "reason", exc))
            raise _SourceError(
                f"cannot reach {redirects.host()}: {reason}", "; use --from FILE or give a mirror with --url"
            ) from None
        guard.receiving_body()
        with response:
            resumed = response.status == 206 and _range_start(response) == have
            if not resumed:  # a whole body (or not the range we asked for): start over
                _start_over(part)
                if response.status == 206:
                    continue
            start = have if resumed else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            if total is not None and total > MAX_DOWNLOAD_BYTES:
                raise _SourceError(_too_large(url, f"announces {total:,} bytes, more"))
            done = _receive(response, part, start, total, on_progress, guard)
        if total is None or done == total:
            return
        if done == start:
            break  # no progress at all: retrying would loop
    raise _SourceError(
        f"download from {redirects.host()} was cut off at byte {part.tell():,}"
        + (f" of {total:,}" if total else "")
        + "; run the command again"
    )


def _start_over(part: BinaryIO) -> None:
    part.seek(0)
    part.truncate()


def _too_large(url: str, what: str) -> str:
    return (
        f"{url} {what} than the {MAX_DOWNLOAD_BYTES >> 20} MiB allowed: not the SMS Spam Collection's zip "
        "(about 200 kB); nothing kept"
    )


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def stall_window_s() -> float:
    """The stall guard's window: ``$SPAMTUNE_DOWNLOAD_STALL_S`` seconds, else a minute."""
    raw = os.environ.get(ENV_STALL_WINDOW, "").strip()
    try:
        value = float(raw) if raw else STALL_WINDOW_S
    except ValueError:
        raise SpamtuneError(f"{ENV_STALL_WINDOW} must be a number of seconds, not '{raw}'") from None
    if not 0 < value < float("inf"):
        raise SpamtuneError(f"{ENV_STALL_WINDOW} must be a positive number of seconds, not '{raw}'")
    return value


class _StallGuard:
    """Gives up on a download that brings less than ``min_bytes`` in a window of ``window_s``
    (each window counted from the end of the last).

    The body's reads count the bytes; a watchdog thread checks each window as it ends, and
    shuts the connection down when it stalls, so a read blocked in the headers, or on a byte
    that comes just within ``HTTP_TIMEOUT_S``, returns at once rather than at the next byte."""

    def __init__(self, url: str, window_s: float) -> None:
        self.url = url
        self.window_s = window_s
        self.min_bytes = max(1, round(MIN_BYTES_PER_WINDOW * window_s / STALL_WINDOW_S))
        self.since = time.monotonic()
        self.received = 0
        self.in_body = False
        self.stalled: str | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    @contextlib.contextmanager
    def watching(self):
        watchdog = threading.Thread(target=self._watch, name="spamtune-download-watchdog", daemon=True)
        watchdog.start()
        try:
            yield self
        finally:
            self._done.set()
            watchdog.join()

    def connected(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            self.in_body = False
            if self.stalled:
                self._shut_down()

    def receiving_body(self) -> None:
        with self._lock:
            self.in_body = True

    def add(self, size: int) -> None:
        with self._lock:
            self.received += size
            self._check()
        self.raise_if_stalled()

    def raise_if_stalled(self) -> None:
        if self.stalled:
            raise _SourceError(self.stalled)

    def _watch(self) -> None:
        tick = min(1.0, self.window_s / 10)
        while not self._done.wait(tick):
            with self._lock:
                if self._check():
                    self._shut_down()
                    return

    def _check(self) -> bool:
        """Whether the download has stalled, closing the window if it has ended well."""
        if self.stalled:
            return True
        elapsed = time.monotonic() - self.since
        if elapsed < self.window_s:
            return False
        if self.received >= self.min_bytes:
            self.since, self.received = time.monotonic(), 0
            return False
        seconds = f"{elapsed:.{0 if elapsed >= 10 else 1}f} s"
        seen = f"sent {self.received:,} bytes in {seconds}" if self.in_body else f"sent no complete response headers in {seconds}"
        self.stalled = (
            f"{self.url} {seen}; giving up (a working link, however slow, sends {self.min_bytes:,} bytes in "
            f"{self.window_s:g} s; {ENV_STALL_WINDOW}=SECONDS allows a longer window)"
        )
        return True

    def _shut_down(self) -> None:
        if self._sock is None:
            return
        try:
            # socket.socket's own shutdown even for TLS: it wakes the reading thread without
            # touching the TLS state that thread is using.
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _guarded_connection(connection_class, guard: _StallGuard):
    """``connection_class`` whose connections, once connected, are watched by ``guard``."""

    def make(*args, **kwargs):
        connection = connection_class(*args, **kwargs)
        connect = connection.connect

        def connect_and_watch() -> None:
            connect()
            guard.connected(connection.sock)

        connection.connect = connect_and_watch
        return connection

    return make


class _HttpOnlyRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only. urllib's own also follows one to ``ftp://``, so a
    mirror could make the download log in to an FTP server of its choosing, anywhere.

    It keeps the URL each request last went to, so that an error names the host that failed:
    after a redirect to a CDN, "cannot reach" the mirror the user named sends them looking in
    the wrong place."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = self.url = ""

    def start(self, url: str) -> None:
        self.asked = self.url = url

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            fp.close()
            raise _SourceError(f"{req.full_url} redirects to {newurl}, not an http(s) URL; not followed")
        request = super().redirect_request(req, fp, code, msg, headers, newurl)
        if request is not None:
            self.url = request.full_url
        return request

    def host(self) -> str:
        """The host the request last went to, with its URL when a redirect led there."""
        host = urlsplit(self.url).hostname or self.url
        return host if self.url == self.asked else f"{host} (redirected to {self.url})"


class _GuardedOpen:
    """Mixed into urllib's HTTP and HTTPS handlers: their connections are watched by ``guard``."""

    def __init__(self, guard: _StallGuard) -> None:
        super().__init__()
        self.guard = guard

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_guarded_connection(http_class, self.guard), req, **kwargs)


class _GuardedHTTPHandler(_GuardedOpen, urllib.request.HTTPHandler):
    pass


class _GuardedHTTPSHandler(_GuardedOpen, urllib.request.HTTPSHandler):
    pass


def _receive(
    response, part: BinaryIO, done: int, total: int | None, on_progress: Progress | None, guard: _StallGuard
) -> int:
    """Append the response body to ``part`` until it ends or the connection drops; bytes held."""
    while True:
        if on_progress:
            on_progress(done, total)
        try:
            # read1: what has arrived, so the guard sees a trickle (read(CHUNK) waits for a
            # whole CHUNK, each byte within HTTP_TIMEOUT_S of the last).
            chunk = response.read1(CHUNK)
        except (OSError, http.client.HTTPException):
            guard.add(0)
            break  # dropped mid-body: keep what arrived, the caller resumes
        guard.add(len(chunk))
        if not chunk:
            break
        if done + len(chunk) > MAX_DOWNLOAD_BYTES:
            raise _SourceError(_too_large(response.geturl(), "sent more"))
        part.write(chunk)  # an OSError here is the disk's: the caller names the folder
        done += len(chunk)
    return done


def _unsafe_entry(name: str) -> bool:
    """A zip entry that would land outside the folder it is extracted into."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in parts


def _extract_verified(zip_file: Path | BinaryIO, origin: str, target: Path, source: DataSource) -> None:
    try:
        archive = zipfile.ZipFile(zip_file)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _SourceError(f"{origin} is not a readable zip file ({exc})") from None
    with archive:
        entries = archive.infolist()
        unsafe = next((e.filename for e in entries if _unsafe_entry(e.filename)), None)
        if unsafe is not None:
            raise _SourceError(
                f"{origin} holds an unsafe entry '{unsafe}' (absolute path or '..'); refusing to extract it"
            )
        member = next((e for e in entries if not e.is_dir() and PurePosixPath(e.filename).name == source.member), None)
        if member is None:
            listing = ", ".join(e.filename for e in entries[:10]) or "nothing"
            raise _SourceError(f"{origin} holds no {source.member} (it holds: {listing})")
        _check_size(member.file_size, origin, source)
        try:
            with archive.open(member) as stream:
                _write_verified(stream, origin, target, source)
        except NotImplementedError as exc:  # a compression method Python's zipfile lacks
            raise _SourceError(f"{origin} is an unsupported zip file ({exc})") from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # bad CRC, damaged or cut-short deflate data
            raise _SourceError(f"{origin} is a corrupt zip file: {member.filename} cannot be read ({exc})") from None


def _check_size(size: int, origin: str, source: DataSource) -> None:
    if size != source.size:
        raise _SourceError(f"{source.member} from {origin} has {size:,} bytes, expected {source.size:,}")


def _write_verified(stream: BinaryIO, origin: str, target: Path, source: DataSource) -> None:
    """Copy ``stream`` to ``target`` atomically, only if it has exactly the expected bytes."""
    digest, size = hashlib.sha256(), 0
    with atomic_path(target) as tmp:
        try:
            out = tmp.open("wb")
        except OSError as exc:
            raise _write_error(target, exc) from None
        with out:
            # Stop once past the expected size: a zip bomb or an endless stream ends here.
            while size <= source.size and (block := stream.read(CHUNK)):
                digest.update(block)
                size += len(block)
                try:
                    out.write(block)
                except OSError as exc:
                    raise _write_error(target, exc) from None
        actual = digest.hexdigest()
        if size != source.size or actual != source.sha256:
            raise _SourceError(
                f"{source.member} from {origin} has sha256 {actual[:12]}... ({size:,} bytes), expected "
                f"{source.sha256[:12]}... ({source.size:,} bytes)"
            )


# --------------------------------------------------------------------------- GPT-2 weights


def pretrained_name(name: str) -> str:
    """``gpt2``/``124M``/``gpt2-small`` -> ``gpt2-small``; anything not on the hub is an error."""
    from spamtune.model_names import canonical_model_name

    valid = ", ".join(paths.HF_REPOS) + " (or gpt2, 124M, 355M, 774M, 1558M)"
    try:
        canonical = canonical_model_name(name)
    except SpamtuneError:
        raise SpamtuneError(f"unknown model '{name}'; choose one of: {valid}") from None
    if canonical not in paths.HF_REPOS:
        raise SpamtuneError(
            f"'{name}' is not a released GPT-2 checkpoint, so there is nothing to download; choose one of: {valid}"
        )
    return canonical


def hub_unreachable(endpoint: str | None = None, timeout: float = 5.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached, or ``None`` when it answers at all (any HTTP
    status counts: something is there). One HEAD request with a short timeout, through the usual
    proxy variables, for a caller that must decide at once (the demo) rather than after the hub
    client's retries, which take half a minute offline."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    base = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT or "https://huggingface.co").rstrip("/")
    url = f"{base}/api/models/{paths.HF_REPOS['gpt2-small']}"
    try:
        with urllib.request.build_opener().open(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        return f"cannot reach {urlsplit(base).hostname or base}: {_reason(getattr(exc, 'reason', exc))}"


def download_model(
    name: str,
    *,
    config: GPTConfig | None = None,
    endpoint: str | None = None,
    progress_bars: bool = False,
    notify: Notify | None = None,
) -> Fetched:
    """Fetch ``model.safetensors`` for a GPT-2 size into the Hugging Face cache, and check it.

    ``config`` is the ``GPTConfig`` the file must match (default: the named size's);
    ``endpoint`` (default ``$HF_ENDPOINT``, else huggingface.co) is the hub or mirror to ask.
    Hugging Face's own progress bars are shown only if ``progress_bars`` (and stderr is a terminal).
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import tqdm as hf_tqdm

    from spamtune.model import GPTConfig
    from spamtune.weights import check_hf_file

    notify = notify or (lambda _msg: None)
    name = pretrained_name(name)
    repo = paths.HF_REPOS[name]
    config = config or GPTConfig.from_name(name)
    # Read now, not when huggingface_hub was imported, and handed over explicitly.
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None

    class _QuietTqdm(hf_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    if constants.is_offline_mode():
        notify(f"HF_HUB_OFFLINE is set: looking for {repo}/{paths.HF_WEIGHTS_FILE} in the Hugging Face cache only")
    else:
        notify(f"looking up {repo}/{paths.HF_WEIGHTS_FILE} on {endpoint or constants.ENDPOINT}")
    cached_before = try_to_load_from_cache(repo, paths.HF_WEIGHTS_FILE)
    guard = _StallGuard(f"{endpoint or constants.ENDPOINT}/{repo}", stall_window_s())
    try:
        with _hub_responses_guarded(guard):
            path = Path(
                hf_hub_download(
                    repo,
                    paths.HF_WEIGHTS_FILE,
                    endpoint=endpoint,
                    tqdm_class=None if progress_bars else _QuietTqdm,
                )
            )
    except _SourceError as exc:  # a stall: the hub's client keeps the .incomplete file to resume from
        raise SpamtuneError(str(exc)) from None
    except Exception as exc:
        _raise_hub_error(exc, name, repo, endpoint)
    status = "present" if isinstance(cached_before, str) and Path(cached_before) == path else "downloaded"
    notify(f"checking the sha256 of {path}")
    _verify_against_hub(path, repo, endpoint)
    check_hf_file(path, config)
    return Fetched(path, status)


@contextlib.contextmanager
def _hub_responses_guarded(guard: _StallGuard):
    """While the block runs, every body the hub's shared HTTP client reads goes through ``guard``.

    Its own timeout (``HF_HUB_DOWNLOAD_TIMEOUT``, 10 s) is per read, so a byte now and then
    keeps a download of gigabytes going for ever. The bytes are counted as they arrive (the hub's
    client writes them 10 MiB at a time), and the read after the window that stalls ends the
    download: within a window and one read timeout. A response head that trickles in, and a
    download over the Xet protocol (``hf_xet``, not HTTP), are not watched."""
    import httpx2
    from huggingface_hub import get_session

    class GuardedStream(httpx2.SyncByteStream):
        def __init__(self, inner, url: str) -> None:
            self.inner, self.url = inner, url

        def __iter__(self):
            guard.url = self.url
            guard.receiving_body()
            for chunk in self.inner:
                guard.add(len(chunk))
                yield chunk

        def close(self) -> None:
            self.inner.close()

    def watch(response) -> None:
        response.stream = GuardedStream(response.stream, str(response.url))

    session = get_session()
    hooks = session.event_hooks
    session.event_hooks = {**hooks, "response": [*hooks.get("response", []), watch]}
    try:
        yield
    finally:
        hooks = session.event_hooks
        session.event_hooks = {**hooks, "response": [hook for hook in hooks.get("response", []) if hook is not watch]}


def import_model(root: Path, name: str, file: str | Path, *, config: GPTConfig | None = None) -> Fetched:
    """Copy a carried-over GPT-2 ``model.safetensors`` into the data root, after checking its shapes."""
    from spamtune.model import GPTConfig
    from spamtune.weights import check_hf_file

    name = pretrained_name(name)
    file = _regular_file(file, "weights file")
    check_hf_file(file, config or GPTConfig.from_name(name))  # also says "not found" / "not safetensors"
    target = paths.imported_weights_file(root, name)
    if target.exists() and target.samefile(file):
        return Fetched(target, "present")
    with atomic_path(target) as tmp:
        try:
            shutil.copyfile(file, tmp)
        except OSError as exc:
            raise _write_error(target, exc) from None
    return Fetched(target, "imported")


def _verify_against_hub(path: Path, repo: str, endpoint: str | None) -> None:
    """Compare the file's sha256 with the one the hub published; remove the file on a mismatch.

    For an LFS file the hub's ETag is the content's sha256, and the cache names the blob after
    it; where the cache holds copies instead of links, the hub is asked again.
    """
    blob = Path(os.path.realpath(path))
    expected = blob.name
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

        if constants.is_offline_mode():
            raise SpamtuneError(
                f"HF_HUB_OFFLINE is set and this Hugging Face cache holds copies, not links named by their sha256, "
                f"so {repo}/{paths.HF_WEIGHTS_FILE} cannot be checked offline; unset HF_HUB_OFFLINE"
            )
        try:
            meta = get_hf_file_metadata(hf_hub_url(repo, paths.HF_WEIGHTS_FILE, endpoint=endpoint), endpoint=endpoint)
        except Exception as exc:
            _raise_hub_error(exc, None, repo, endpoint)
        expected = meta.etag or ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise SpamtuneError(
            f"the hub gives no sha256 for {repo}/{paths.HF_WEIGHTS_FILE} (ETag '{expected}'), so it cannot be "
            "verified; download it by hand and use --from FILE"
        )
    actual = sha256_file(blob)
    if actual != expected:
        blob.unlink(missing_ok=True)
        if path != blob:
            path.unlink(missing_ok=True)
        raise SpamtuneError(
            f"{repo}/{paths.HF_WEIGHTS_FILE} has sha256 {actual[:12]}... but the hub lists {expected[:12]}...; "
            "the bad file was removed, run the command again"
        )


def _raise_hub_error(exc: Exception, name: str | None, repo: str, endpoint: str | None) -> NoReturn:
    """Re-raise what ``huggingface_hub`` raised as one line; anything unforeseen as it is (a bug)."""
    message = _hub_error_message(exc, name, repo, endpoint)
    if message is None:
        raise exc
    raise SpamtuneError(message) from None


def _hub_error_message(exc: Exception, name: str | None, repo: str, endpoint: str | None) -> str | None:
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        FileMetadataError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    hub = endpoint or constants.ENDPOINT
    what = f"{name} ({repo})" if name else repo
    # "Not in the cache and could not ask the hub": the reason it could not is the cause.
    cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ else exc

    offline = isinstance(exc, LocalEntryNotFoundError) and constants.is_offline_mode()
    if offline or isinstance(cause, OfflineModeIsEnabled):
        return (
            f"HF_HUB_OFFLINE is set and {what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}); "
            "unset HF_HUB_OFFLINE to download it, or use --from FILE"
        )
    if isinstance(cause, (httpx2.TransportError, ConnectionError, TimeoutError)):
        host = _request_host(cause) or urlsplit(hub).hostname or hub
        return f"cannot reach {host}: {_reason(cause)}; use --from FILE or set HF_ENDPOINT"
    if isinstance(cause, RepositoryNotFoundError):
        return f"{hub} has no repository {repo} (HTTP {cause.response.status_code})"
    if isinstance(cause, RemoteEntryNotFoundError):
        return f"{repo} on {hub} has no {paths.HF_WEIGHTS_FILE} (HTTP {cause.response.status_code})"
    if isinstance(cause, HfHubHTTPError):
        response = cause.response
        return f"{response.url.host} answered HTTP {response.status_code} {response.reason_phrase} for {response.url}"
    if isinstance(cause, FileMetadataError):
        return f"{hub} does not answer like a Hugging Face hub (no commit or ETag header); check HF_ENDPOINT"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (
            f"disk full: cannot write to the Hugging Face cache {constants.HF_HUB_CACHE}; "
            "free some space and run again"
        )
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):  # huggingface_hub's size check
        return f"the download of {what} came back with the wrong size; run the command again"
    if isinstance(exc, OSError):
        return f"cannot fetch {what}: {_reason(exc)}"
    return None


def _request_host(exc: Exception) -> str | None:
    try:
        return exc.request.url.host  # httpx2 errors raised while sending carry their request
    except (AttributeError, RuntimeError):
        return None
