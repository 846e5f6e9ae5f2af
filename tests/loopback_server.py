"""A real HTTP server on 127.0.0.1 for the download tests: no network needed, nothing leaves the box.

It serves bytes the tests register, honours ``Range: bytes=N-`` like a CDN, records every
request, and misbehaves on cue: each entry of a resource's ``script`` is used up by one GET,
``"drop"`` sending half the body before closing the connection, a number answering with that
HTTP status instead. A resource with ``stream_up_to`` sends its body over and over, with no
Content-Length, until the client hangs up, as a broken or hostile server can; it stops by
itself after that many bytes, so a client that fails to stop it cannot fill the disk. A
resource with ``pace`` sends its body a few bytes at a time, slowly: a slow link, or a server
that trickles a byte now and then to keep each of the client's reads under its timeout;
``pace_headers`` trickles the status line and headers that way instead, the body never coming.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Resource:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    script: list = field(default_factory=list)  # per GET, in order: "drop" or an HTTP status
    ranges: bool = True  # False: answer a Range request with the whole body, as some servers do
    stream_up_to: int = 0  # > 0: repeat the body without a Content-Length, at most this many bytes
    pace: tuple[int, float] | None = None  # (bytes, seconds): send that many bytes, then wait
    pace_headers: tuple[int, float] | None = None  # the same for an endless response head


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case


class LoopbackServer:
    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.requests: list[Request] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.closed = threading.Event()  # a paced body stops when the server does
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, body: bytes = b"", **kwargs) -> str:
        self.resources[path] = Resource(body, **kwargs)
        return self.url(path)

    def requests_for(self, path: str, method: str = "GET") -> list[Request]:
        return [r for r in self.requests if r.path == path and r.method == method]

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closed.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def closed_port_url(path: str = "/") -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def _handler_for(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the hub and CDNs answer

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            server.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            resource = server.resources.get(self.path)
            if resource is None:
                return self._reply(404, {}, b"not found", body)
            if resource.pace_headers:
                self.close_connection = True
                head = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 60_000
                return self._paced(head, *resource.pace_headers)
            if resource.stream_up_to:
                return self._stream(resource.body if body else b"", resource.stream_up_to)
            action = resource.script.pop(0) if body and resource.script else None
            if isinstance(action, int):
                return self._reply(action, {}, b"scripted failure", body)
            status, headers, payload = resource.status, dict(resource.headers), resource.body
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match and status == 200 and resource.ranges:
                start = int(match.group(1))
                if start >= len(payload):
                    return self._reply(416, {"Content-Range": f"bytes */{len(payload)}"}, b"", body)
                headers["Content-Range"] = f"bytes {start}-{len(payload) - 1}/{len(payload)}"
                status, payload = 206, payload[start:]
            if action == "drop":
                self._reply(status, headers, payload[: len(payload) // 2], body, length=len(payload))
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._reply(status, headers, payload, body, pace=resource.pace)

        def _stream(self, chunk: bytes, up_to: int) -> None:
            self.send_response(200)
            self.send_header("Connection", "close")  # the body ends only when the connection does
            self.end_headers()
            self.close_connection = True
            sent = 0
            try:
                while chunk and sent < up_to:
                    self.wfile.write(chunk)
                    sent += len(chunk)
            except OSError:  # the client hung up, as it should
                pass

        def _reply(
            self, status: int, headers: dict, payload: bytes, body: bool, length: int | None = None, pace=None
        ) -> None:
            self.send_response(status)
            headers.setdefault("Accept-Ranges", "bytes")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload) if length is None else length))
            self.end_headers()
            if body and pace:
                return self._paced(payload, *pace)
            if body:
                self.wfile.write(payload)
                self.wfile.flush()

        def _paced(self, payload: bytes, size: int, seconds: float) -> None:
            self.close_connection = True
            try:
                self.wfile.flush()
                for start in range(0, len(payload), size):
                    if server.closed.wait(seconds):
                        break
                    self.wfile.write(payload[start : start + size])
                    self.wfile.flush()
            except OSError:  # the client hung up, as it should when it gives up
                pass

    return Handler
