"""Running the service: uvicorn on one event loop, a clean exit on SIGTERM or Ctrl-C.

uvicorn already stops accepting connections on SIGTERM/SIGINT, lets the requests in flight
finish and then runs the app's shutdown (which drains the batcher). It then re-raises the signal
so the process dies by it; a service that was asked to stop and did is a success, so this
server exits normally (status 0) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import sys
from collections.abc import Callable

import uvicorn

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# Seconds the requests in flight get to finish after SIGTERM before they are cancelled.
GRACEFUL_SHUTDOWN_S = 30
# Connections served at once; beyond it uvicorn answers 503 at once instead of queueing without
# bound (each waiting request holds its body in memory).
MAX_CONNECTIONS = 1024


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str], None]):
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self._on_ready(f"http://{shown}:{port}")

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            # Stopped on request, requests finished: exit 0 rather than die by the signal.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()


# What a request that is no HTTP gets: the service's error shape, like every other refusal.
MALFORMED_REQUEST = json.dumps({"error": "malformed HTTP request"}).encode()


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools where installed, else h11, as uvicorn picks), answering
    a request its parser refuses (``Content-Length: abc``, a header line with no colon) in JSON.

    The parser refuses such a request before the app is called, so no route, middleware or
    exception handler of the app ever sees it; uvicorn writes the 400 itself, as plain text,
    from ``send_400_response``, which both of its protocols have. That one method is replaced:
    the same status and closed connection, the service's body.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class JsonErrorsProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        def send_400_response(self, msg: str) -> None:
            head = [b"HTTP/1.1 400 Bad Request"]
            head += [name + b": " + value for name, value in self.server_state.default_headers]
            head += [b"content-type: application/json", b"content-length: %d" % len(MALFORMED_REQUEST), b"connection: close"]
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + MALFORMED_REQUEST)
            self.transport.close()

    return JsonErrorsProtocol


def service_config(app, host: str, port: int, access_log: bool = False) -> uvicorn.Config:
    """How ``spamtune serve`` runs uvicorn: its limits, its shutdown, its JSON 400s."""
    return uvicorn.Config(
        app, host=host, port=port, log_level="info" if access_log else "warning", access_log=access_log,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False, lifespan="on",
        limit_concurrency=MAX_CONNECTIONS, http=http_protocol(),
    )  # fmt: skip


def serve_app(app, host: str, port: int, on_ready: Callable[[str], None], access_log: bool = False) -> bool:
    """Serve ``app`` until SIGTERM/SIGINT; ``on_ready(url)`` once the socket accepts connections.
    Returns False when the server could not start (e.g. the port is taken; uvicorn logged why)."""
    server = _Server(service_config(app, host, port, access_log), on_ready)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 1 when the socket cannot be bound
        return exc.code in (0, None)
    return server.started


def print_ready(url: str) -> None:
    print(f"spamtune serve: ready on {url}", file=sys.stderr, flush=True)
