"""Running the service: uvicorn on one event loop, a clean exit on SIGTERM or Ctrl-C.

uvicorn already stops accepting connections on SIGTERM/SIGINT, lets the requests in flight
finish and then runs the app's shutdown (which drains the batcher). It then re-raises the signal
so the process dies by it; a service that was asked to stop and did is a success, so this
server exits normally (status 0) instead. A Ctrl-C while it waits (a second one) makes uvicorn
stop at once, without the requests in flight (they get 503) or the app's shutdown:
``serve_app`` says so (``Outcome.STOPPED_AT_ONCE``) and the command exits 130 with one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import ipaddress
import json
import socket
import sys
from collections.abc import Callable

import uvicorn

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# Seconds the requests in flight get to finish after SIGTERM before they are cancelled.
GRACEFUL_SHUTDOWN_S = 30
# Connections (and requests in progress) served at once; a request beyond it is answered 503 at
# once instead of queueing without bound (each waiting request holds its body in memory).
MAX_CONNECTIONS = 1024
# Seconds a connection has to send a whole request head, from its opening or from the end of the
# previous answer; then it is closed. uvicorn closes an idle connection only after an answer,
# and only if no byte at all arrives: a connection that sends nothing, or a head one byte at a
# time, would hold one of MAX_CONNECTIONS forever, and that many of them lock every client out.
# The same for a client that stops reading its answer: once the answer fills the socket's buffers
# the request waits for it to read, with no timeout of uvicorn's, so a client that pipelines
# requests and reads nothing held one of MAX_CONNECTIONS for as long as it liked. A connection
# whose writing stays paused for HEAD_TIMEOUT_S (the client took in no ~48 KiB meanwhile) is cut.
HEAD_TIMEOUT_S = 10.0
# A chunked body may come in pieces of any size, and each piece costs h11 an event and uvicorn a
# copy of the body so far, on the event loop every client shares: a 1 MiB body sent as 1-byte
# chunks (6 MB on the wire) took 14 s of it, holding up every other request. Past
# MAX_SMALL_BODY_PIECES pieces, a body whose pieces average under MIN_BODY_PIECE_BYTES is refused.
# Clients send chunks of kilobytes (and a Content-Length body comes in the network's reads),
# far above both.
MAX_SMALL_BODY_PIECES = 4096
MIN_BODY_PIECE_BYTES = 256
TOO_MANY_PIECES = json.dumps({
    "error": f"request body in too many small chunks (over {MAX_SMALL_BODY_PIECES:,}, "
    f"averaging under {MIN_BODY_PIECE_BYTES} bytes)",
}).encode()  # fmt: skip


def bare_host(host: str) -> str:
    """``host`` as a socket binds it: an IPv6 address without the brackets a URL puts around it
    (``--host [::1]``, as one writes it in ``http://[::1]:8080``)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(bare_host(host)).is_loopback
    except ValueError:
        return False


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """The sockets the service will listen on, bound now to every address ``host`` resolves to
    (as asyncio's ``create_server`` binds them): ``serve`` makes them before it loads the run, so
    that a host that does not resolve, an address this machine does not have or a taken port
    fails at once rather than after the load (seconds, minutes for a large model). Raises
    ``OSError`` (``socket.gaierror`` for a host that does not resolve); ``listen_failure`` words it.

    They are bound, not only tried, so that no other process takes the port during the load;
    and they listen only once the service is ready (``serve_app``), so that until then a
    connection is refused, as with a service that is not up, rather than left waiting. Bound
    with ``SO_REUSEADDR``, as every server binds (else a restart fails while the previous
    process's connections linger in TIME_WAIT), which is then cleared until ``serve_app``
    listens: on Linux a socket that is not yet listening shares its port with any other that
    sets it too, so a server started meanwhile would take the port from under this one."""
    bare = bare_host(host)
    found = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):  # without repeats, in order
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # this address only, as asyncio binds it
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listen_failure(host: str, port: int, exc: OSError) -> str:
    """Why ``listening_sockets(host, port)`` failed, in one line."""
    bare = bare_host(host)
    where = f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
    if isinstance(exc, socket.gaierror):
        reason = f"the host name does not resolve ({exc.strerror})"
    elif exc.errno == errno.EADDRINUSE:
        reason = "the port is taken (another process listens on it; --port 0 takes a free one)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = "this machine has no such address"
    elif exc.errno == errno.EACCES and 0 < port < 1024:
        reason = "permission denied (ports below 1024 need privileges)"
    else:
        reason = exc.strerror or str(exc)
    return f"could not listen on {where}: {reason}"


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


def http_protocol(
    over_limit, on_malformed: Callable[[], None], head_timeout_s: float = HEAD_TIMEOUT_S
) -> type[asyncio.Protocol]:
    """uvicorn's h11 HTTP protocol, answering in JSON the requests that uvicorn would answer
    itself, in plain text, before the app is called.

    h11 always, not the parser uvicorn picks by itself (``http="auto"``: httptools wherever it
    is installed, as ``uvicorn[standard]`` installs it). Every change below reaches into the
    parser's protocol class, and the body guard into h11's events: with httptools picked instead,
    a body in a million 1-byte chunks was served rather than refused, and the whole protocol ran
    on a parser the service is not tested with, so that what a client got depended on what else
    happened to be installed. h11 is the slower parser, but its cost per request is small beside
    a model's forward pass.

    A request its parser refuses (``Content-Length: abc``, a header line with no colon): uvicorn
    writes the 400 from ``send_400_response``, which both of its protocols have. That one method
    is replaced: the same status and closed connection, the service's body and security headers,
    and ``on_malformed()`` called, so that the metrics count it.

    A request beyond the connection limit (``config.limit_concurrency``): uvicorn would run its
    own plain-text 503 app instead of the app. This protocol turns uvicorn's check off and makes
    its own where the app is picked, running the ASGI app ``over_limit`` instead of the app.

    A connection that has not sent a whole request head ``head_timeout_s`` after it opened, or
    after its previous answer ended, is closed (``HEAD_TIMEOUT_S`` says why); so is one that reads
    nothing of its answer for as long, once the answer fills the buffers (aborted, as what it
    holds will never be read).

    A request asking to upgrade the connection (``Upgrade: websocket``) is served as a plain
    request, with no warning logged.

    A body in too many small pieces (``MAX_SMALL_BODY_PIECES`` says why) is refused as
    malformed, with its own reason, before it costs the event loop more (h11's events are
    counted).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from spamtune.serve.app import ANSWERED_BY_PARSER, SECURITY_HEADERS

    class JsonErrorsProtocol(H11Protocol):
        def __init__(self, *args, **kwargs) -> None:
            self._head_deadline: asyncio.TimerHandle | None = None
            self._read_deadline: asyncio.TimerHandle | None = None
            self._refusal = MALFORMED_REQUEST
            self._admitted = False  # a request of this connection's was served (see ``app``)
            self._answered: asyncio.Task | None = None  # the task of its last request answered
            super().__init__(*args, **kwargs)
            # uvicorn's own check off: the limit is checked where the app is picked (``app``).
            self.max_connections, self.limit_concurrency = self.limit_concurrency, None
            self.conn.next_event = _counting_body_pieces(self.conn.next_event, self._refuse_with)

        def _refuse_with(self, body: bytes) -> None:
            self._refusal = body

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_head()

        def on_response_complete(self) -> None:
            # Called within the answered request's task, which is still among the server's
            # tasks when uvicorn reads a pipelined request's head, below (``app``).
            self._answered = asyncio.current_task()
            self._await_head()  # first: uvicorn reads a pipelined request's head within it
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._answered = None
            self._head_read()
            self._answer_read()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            super().pause_writing()
            self._answer_read()
            self._read_deadline = self.loop.call_later(head_timeout_s, self.transport.abort)

        def resume_writing(self) -> None:
            self._answer_read()
            super().resume_writing()

        def _answer_read(self) -> None:
            if self._read_deadline is not None:
                self._read_deadline.cancel()
                self._read_deadline = None

        def _await_head(self) -> None:
            self._head_read()
            self._head_deadline = self.loop.call_later(head_timeout_s, self._head_too_slow)

        def _head_read(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_too_slow(self) -> None:
            self._head_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        @property
        def app(self):
            """The ASGI app to run for the request whose head has just been read: uvicorn reads
            this once per request, right where it would check its own limit.

            This request's connection is among ``connections`` by then (idle keep-alive ones
            are too); its task is not yet among ``tasks`` (which keeps a request that goes on
            after its client left). Refused are a request on connection ``max_connections + 1``
            and one arriving while ``max_connections`` are in progress: the service serves that
            many at once, as its answer says. (uvicorn's own check refuses on connection
            ``max_connections`` already, serving one connection fewer than its limit.)

            A connection once served stays served: it is one of the ``max_connections``, so a
            newer connection beyond them is refused, not its next request. Nor does its own
            previous request count as in progress: a pipelined request's head is read as the
            answer before it completes, in that answer's task, which is still among ``tasks``
            then, and the second of two requests sent at once got a 503 from a service with
            room for both (at a limit of one, always). A task done is not counted either: it
            leaves ``tasks`` only in a callback a moment later."""
            self._head_read()
            limit, state = self.max_connections, self.server_state
            if limit is not None:
                in_progress = sum(1 for task in state.tasks if task is not self._answered and not task.done())
                if (not self._admitted and len(state.connections) > limit) or in_progress >= limit:
                    self.logger.warning("Refused a request: the service serves at most %d connections at once.", limit)
                    return over_limit
            self._admitted = True
            return self._app

        @app.setter
        def app(self, app) -> None:
            self._app = app

        def _unsupported_upgrade_warning(self) -> None:
            """Nothing logged. The service has no WebSocket endpoint (``ws="none"``): a request
            asking to upgrade is served as the plain HTTP request it also is, and uvicorn's two
            warnings for each one (even with ``ws="none"``) would let any client fill the log."""

        def send_400_response(self, msg: str) -> None:
            cycle = getattr(self, "cycle", None)
            if cycle is not None and not cycle.response_started:
                # Mid-body: the app's own answer to this request will never be written; this
                # one stands for it, counted once (``on_malformed``), not again by the app.
                cycle.scope[ANSWERED_BY_PARSER] = True
            head = [b"HTTP/1.1 400 Bad Request"]
            head += [name + b": " + value for name, value in self.server_state.default_headers]
            head += [name.lower().encode() + b": " + value.encode() for name, value in SECURITY_HEADERS]
            head += [b"content-type: application/json", b"content-length: %d" % len(self._refusal), b"connection: close"]
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + self._refusal)
            self.transport.close()
            on_malformed()

    return JsonErrorsProtocol


def _counting_body_pieces(next_event: Callable[[], object], refuse_with: Callable[[bytes], None]):
    """h11's ``next_event``, raising its protocol error (which uvicorn answers with
    ``send_400_response``) once a request's body has too many small pieces."""
    import h11

    pieces = size = 0

    def counted():
        nonlocal pieces, size
        event = next_event()
        if isinstance(event, h11.Request):
            pieces = size = 0
        elif isinstance(event, h11.Data):
            pieces, size = pieces + 1, size + len(event.data)
            if pieces > MAX_SMALL_BODY_PIECES and size < MIN_BODY_PIECE_BYTES * pieces:
                refuse_with(TOO_MANY_PIECES)
                raise h11.RemoteProtocolError("request body in too many small chunks")
        return event

    return counted


def service_config(
    app, host: str, port: int, access_log: bool = False, max_connections: int = MAX_CONNECTIONS,
    head_timeout_s: float = HEAD_TIMEOUT_S,
) -> uvicorn.Config:
    """How ``spamtune serve`` runs ``app`` (``create_app``'s) with uvicorn: its limits, its
    shutdown, its JSON 400s and 503s."""
    from spamtune.serve.app import connection_limit_refusal, malformed_request_counter

    over_limit = connection_limit_refusal(app, max_connections)
    return uvicorn.Config(
        app, host=host, port=port, log_level="info" if access_log else "warning", access_log=access_log,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False, lifespan="on",
        # No WebSocket endpoint: with a WebSocket library installed uvicorn would upgrade such
        # requests and hand the app a scope it has no route for.
        ws="none",
        limit_concurrency=max_connections, http=http_protocol(over_limit, malformed_request_counter(app), head_timeout_s),
    )  # fmt: skip


class Outcome(enum.Enum):
    """How ``serve_app`` ended."""

    STOPPED = "stopped"  # on SIGTERM or Ctrl-C, the requests in flight finished
    STOPPED_AT_ONCE = "stopped at once"  # Ctrl-C while stopping: the requests in flight were not waited for
    FAILED = "failed"  # could not start (the line logged above says why)


def serve_app(
    app, sockets: list[socket.socket], on_ready: Callable[[str], None], access_log: bool = False
) -> Outcome:
    """Serve ``app`` on ``sockets`` (``listening_sockets``') until SIGTERM/SIGINT; ``on_ready(url)``
    once they accept connections."""
    for sock in sockets:  # as uvicorn would bind them: see listening_sockets
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    host, port = sockets[0].getsockname()[:2]
    server = _Server(service_config(app, host, port, access_log), on_ready)
    try:
        server.run(sockets=sockets)
    except SystemExit as exc:  # uvicorn exits 1 when the app's startup fails
        return Outcome.STOPPED if exc.code in (0, None) else Outcome.FAILED
    except OSError as exc:  # listen() failed after all: a system that let another process take the port
        print(f"spamtune serve: {listen_failure(host, port, exc)}", file=sys.stderr, flush=True)
        return Outcome.FAILED
    if not server.started:
        return Outcome.FAILED
    return Outcome.STOPPED_AT_ONCE if server.force_exit else Outcome.STOPPED


def print_ready(url: str) -> None:
    print(f"spamtune serve: ready on {url}", file=sys.stderr, flush=True)
