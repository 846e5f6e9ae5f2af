"""A real ``spamtune serve`` app on 127.0.0.1 in a background thread, for the service tests.

uvicorn listens on a free port of the loopback interface only; nothing leaves the machine.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import uvicorn

from spamtune.serve.server import HEAD_TIMEOUT_S, MAX_CONNECTIONS, service_config


@contextmanager
def running(
    app, startup_timeout: float = 20.0, max_connections: int = MAX_CONNECTIONS, keep_alive_s: float | None = None,
    head_timeout_s: float = HEAD_TIMEOUT_S, graceful_shutdown_s: float | None = None,
):
    """Serve ``app`` while the block runs, under uvicorn set up as ``spamtune serve`` sets it up
    (but for ``max_connections``, ``keep_alive_s``, how long an idle connection is kept open
    after an answer, ``head_timeout_s``, how long a request head may take to arrive, and
    ``graceful_shutdown_s``, how long requests in flight get once the block ends);
    yields its base URL (``http://127.0.0.1:PORT``)."""
    config = service_config(app, "127.0.0.1", 0, max_connections=max_connections, head_timeout_s=head_timeout_s)
    if keep_alive_s is not None:
        config.timeout_keep_alive = keep_alive_s
    if graceful_shutdown_s is not None:
        config.timeout_graceful_shutdown = graceful_shutdown_s
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test service did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def call(url: str, method: str = "GET", body: bytes | dict | None = None, headers: dict | None = None, timeout=30):
    """``(status, headers, body bytes)`` of one request; HTTP errors are answers too, not exceptions."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def call_json(url: str, method: str = "GET", body=None, headers=None) -> tuple[int, dict]:
    status, _, payload = call(url, method, body, headers)
    return status, json.loads(payload)
