"""Running the service: uvicorn on one event loop, a clean exit on SIGTERM or Ctrl-C.

uvicorn already stops accepting connections on SIGTERM/SIGINT, lets the requests in flight
finish and then runs the app's shutdown (which drains the batcher). It then re-raises the signal
so the process dies by it; a service that was asked to stop and did is a success, so this
server exits normally (status 0) instead.
"""

from __future__ import annotations

import contextlib
import ipaddress
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


def serve_app(app, host: str, port: int, on_ready: Callable[[str], None], access_log: bool = False) -> bool:
    """Serve ``app`` until SIGTERM/SIGINT; ``on_ready(url)`` once the socket accepts connections.
    Returns False when the server could not start (e.g. the port is taken; uvicorn logged why)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info" if access_log else "warning", access_log=access_log,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False, lifespan="on",
        limit_concurrency=MAX_CONNECTIONS,
    )  # fmt: skip
    server = _Server(config, on_ready)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 1 when the socket cannot be bound
        return exc.code in (0, None)
    return server.started


def print_ready(url: str) -> None:
    print(f"spamtune serve: ready on {url}", file=sys.stderr, flush=True)
