"""The HTTP API of ``spamtune serve`` (FastAPI): routes, limits, authentication, errors, metrics.

``create_app(classifier, settings)`` wraps a loaded ``SpamClassifier``; the model runs on the
dynamic batcher's worker thread, never on the event loop. Every error a client sees is one JSON
line, ``{"error": "..."}``: tracebacks and file paths stay in the server's log.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from spamtune import __version__
from spamtune.calibration import threshold_refusal
from spamtune.client import well_formed  # a lone surrogate, which no UTF-8 answer can carry back, as U+FFFD
from spamtune.serve import verdicts
from spamtune.serve.batcher import DynamicBatcher, ServiceStopping
from spamtune.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from spamtune.serve.metrics import ServiceMetrics


@dataclass(frozen=True)
class ServeSettings:
    """Limits and switches of one service (the ``spamtune serve`` options)."""

    max_body_bytes: int = 1 << 20  # a JSON request
    max_mail_bytes: int = 10 << 20  # a raw message: mail servers commonly cap at 10-25 MB
    max_texts: int = 256  # texts in one JSON request
    max_explain_texts: int = 8  # texts in one request with "explain": each costs up to 65 forward passes
    max_batch: int = 128  # texts in one forward pass
    max_wait_ms: float = 50.0  # while busy; at most 5% of the previous pass (see batcher.LINGER_SHARE)
    # A whole request body, from the end of its head: a client that sends it slowly or never
    # would otherwise hold a connection and a request of the service's limit forever.
    body_timeout_s: float = 60.0
    # Request bodies held at once, all requests together (from their first byte to their answer):
    # each request's own limit alone let 1,024 connections each hold a 10 MiB message, 11 GiB.
    max_bodies_bytes: int = 256 << 20
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()


class ApiError(Exception):
    """A request the service refuses, with the status and the one line the client sees."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# ----------------------------------------------------------------------------- documented shapes
# Used for the OpenAPI page only: requests are parsed by hand (for one-line 422 reasons and
# body limits enforced while reading) and responses are written directly.


class ClassifyRequest(BaseModel):
    """Either ``texts`` (a list) or ``text`` (one string); ``threshold`` overrides the service's for this request;
    ``explain`` adds each text's explanation (at most 8 texts by default)."""

    texts: list[str] | None = None
    text: str | None = None
    threshold: float | None = None
    explain: bool = False


class Span(BaseModel):
    """A word of the text, ``text == submitted[start:end]`` (offsets in characters), and its push
    towards spam (positive ``score``) or ham (negative), in calibrated log-odds."""

    text: str
    start: int
    end: int
    score: float


class WindowPart(BaseModel):
    """A stretch of the text that the explanation explains: characters ``[start, end)``, tokens
    ``[token_start, token_end)`` of its encoding (a text longer than the run's window: its head;
    a mail message's: the chunk that decided)."""

    start: int
    end: int
    token_start: int
    token_end: int


class Verdict(BaseModel):
    label: str
    p_spam: float
    explanation: list[Span] | None = None
    window: list[WindowPart] | None = None


class Answer(BaseModel):
    """What every classification answer starts with: the run that classified and the threshold it applied."""

    run: str
    threshold: float


class ClassifyResponse(Answer):
    """``results`` (in order) for ``texts``; ``label`` and ``p_spam`` at the top level for ``text``."""

    results: list[Verdict] | None = None
    label: str | None = None
    p_spam: float | None = None
    explanation: list[Span] | None = None
    window: list[WindowPart] | None = None


class MailResponse(Answer):
    """``damaged``: the message had defects its reading worked around (as ``predict --mail``
    says). With ``?explain=true`` also the explanation, its window, and ``text``: the text the
    model read of the message (decoded Subject and body), which their offsets index."""

    label: str
    p_spam: float
    damaged: bool
    headers: dict[str, str]
    explanation: list[Span] | None = None
    window: list[WindowPart] | None = None
    text: str | None = None


class ErrorResponse(BaseModel):
    error: str


ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 408, 413, 422, 503)}

# Paths counted under their own name in the metrics; anything else is "other", so that random
# URLs cannot grow the number of series without bound.
_ENDPOINTS = frozenset({
    "/", "/static/app.css", "/static/app.js", "/healthz", "/metrics", "/v1/model", "/v1/classify",
    "/v1/classify/mail", "/docs", "/openapi.json",
})  # fmt: skip
# On every answer, those the HTTP parser refuses included (``server.http_protocol``).
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
# The endpoint label of requests the HTTP parser refused: their path, if any, is not to be trusted.
MALFORMED_ENDPOINT = "malformed"
# Set in a request's scope when the parser answered it mid-body (``server.http_protocol``).
ANSWERED_BY_PARSER = "spamtune.answered_by_parser"
_PUBLIC = frozenset({"/", "/static/app.css", "/static/app.js", "/healthz", "/docs", "/openapi.json"})

# The page loads nothing from elsewhere and runs no inline code.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def create_app(classifier: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving ``classifier`` (a ``SpamClassifier``, or anything with its interface)."""
    settings = settings or ServeSettings()
    metrics = ServiceMetrics()
    # Never below one request's own limit, or a body within it could never be served.
    bodies = BodyBudget(max(settings.max_bodies_bytes, settings.max_body_bytes, settings.max_mail_bytes))
    batcher = DynamicBatcher(
        verdicts.predictors(classifier),
        max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000, on_pass=metrics.observe_pass,
        kind_max_batch={"explain": settings.max_explain_texts, "mail-explain": settings.max_explain_texts},
    )  # fmt: skip
    run_name = classifier.run_dir.name if getattr(classifier, "run_dir", None) is not None else "unnamed"
    labels = list(classifier.labels)
    positive = classifier.positive_label
    two_classes = len(labels) == 2
    negative = labels[1 - labels.index(positive)] if two_classes else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        try:
            yield
        except asyncio.CancelledError:
            # The server ends without a shutdown (a second Ctrl-C): it waits for no request, so
            # neither for the pass in progress. The cancellation ends here: re-raised, Starlette
            # would report a failed shutdown with its traceback, for an operator's normal action.
            batcher.stop(timeout=0)
        finally:
            if batcher.running:  # uvicorn has finished the requests in flight by now
                await run_in_threadpool(batcher.stop, 30.0)

    app = FastAPI(
        title="spamtune",
        version=__version__,
        summary="Spam/ham classification with a fine-tuned GPT-2 run.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.batcher = batcher
    app.state.metrics = metrics

    # ------------------------------------------------------------------------- errors

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, "request refused")
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "query")
        return JSONResponse({"error": f"invalid {where or 'request'}: {first.get('msg', 'bad value')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        # The traceback goes to the server's log (uvicorn prints it); the client learns nothing of it.
        return JSONResponse({"error": "internal error"}, status_code=500)

    # ------------------------------------------------------------------------- middleware

    # The last one added is the outermost: CORS inside the guard, so that the preflights CORS
    # answers by itself are counted in the metrics and get the security headers too.
    if settings.cors_origins:
        app.add_middleware(
            JsonRefusalCORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip

    app.add_middleware(
        GuardMiddleware, api_key=settings.api_key, metrics=metrics, browser_guard=not settings.api_key,
        cors_origins=settings.cors_origins,
    )  # fmt: skip

    # ------------------------------------------------------------------------- classification

    async def classify(texts: list[str], kind: str = "text") -> list:
        if not batcher.running:
            raise ApiError(503, "the service is shutting down")
        metrics.in_flight.inc()
        try:
            return await batcher.classify(texts, kind)
        except ServiceStopping:
            raise ApiError(503, "the service is shutting down") from None
        finally:
            metrics.in_flight.dec()

    def verdict(prediction: Any, threshold: float | None) -> tuple[str, float]:
        """(label, p_spam); a request's own threshold relabels the way ``SpamClassifier`` labels."""
        p = prediction.probability
        if threshold is None or not two_classes:
            return prediction.label, p
        return (positive if p >= threshold else negative), p

    def threshold_of(requested: float | None) -> float:
        return classifier.threshold if requested is None else requested

    # A run of more classes decides by the most probable one: a request's threshold would be
    # silently ignored, and its answer would claim a threshold that decided nothing.
    threshold_refused = threshold_refusal(labels)

    def check_requested(requested: float | None, name: str) -> None:
        if requested is not None and threshold_refused is not None:
            raise ApiError(422, threshold_refused.replace("{option}", name))

    classify_body = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ClassifyRequest.model_json_schema()}},
        }
    }

    @app.post(
        "/v1/classify", response_model=ClassifyResponse, responses=ERRORS, openapi_extra=classify_body,
        summary="Classify texts",
    )  # fmt: skip
    async def classify_texts(request: Request) -> Response:
        """Classify ``{"texts": [...]}`` or ``{"text": "..."}`` exactly as ``spamtune predict`` does;
        with ``"explain": true``, each verdict also carries ``predict --explain``'s spans."""
        refuse_unknown_parameters(
            request, (), '/v1/classify takes its options in the JSON body: {"text": ..., "threshold": ...}'
        )
        async with bodies.holding() as share:
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s, share)
            texts, single, requested, explain = parse_classify_request(
                body, settings.max_texts, settings.max_explain_texts
            )
            check_requested(requested, '"threshold"')
            results = []
            for item in await classify(texts, "explain" if explain else "text"):
                prediction, spans, window = item if explain else (item, None, None)
                result: dict[str, Any] = dict(zip(("label", "p_spam"), verdict(prediction, requested)))
                if explain:
                    result["explanation"], result["window"] = spans, window
                results.append(result)
        answer: dict[str, Any] = {"run": run_name, "threshold": threshold_of(requested)}
        if single:
            answer.update(results[0])
        else:
            answer["results"] = results
        return JSONResponse(answer)

    @app.post(
        "/v1/classify/mail", response_model=MailResponse, responses=ERRORS, summary="Classify a raw RFC 822 message",
        openapi_extra={"requestBody": {"required": True, "content": {"message/rfc822": {"schema": {"type": "string"}}}}},
    )  # fmt: skip
    async def classify_mail(request: Request, threshold: float | None = None, explain: bool = False) -> Response:
        """The verdict on one raw message (the request body, as a mail server holds it), read as
        ``spamtune filter`` reads it, and the headers it would add; with ``?explain=true`` also
        ``predict --mail --explain``'s spans, window and the text they index."""
        refuse_unknown_parameters(request, ("threshold", "explain"), "/v1/classify/mail takes ?threshold= and ?explain= only")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ApiError(422, "invalid threshold: must be between 0 and 1")
        check_requested(threshold, "?threshold=")
        async with bodies.holding() as share:
            raw = await read_body(request, settings.max_mail_bytes, settings.body_timeout_s, share)
            read = await run_in_threadpool(verdicts.extract, raw)  # parsing a large message takes a while
            text = read.text
            (item,) = await classify([text], "mail-explain" if explain else "mail")
            prediction, spans, window = item if explain else (item, None, None)
            label, p = verdict(prediction, threshold)
        used = threshold_of(threshold)
        answer = {
            "run": run_name, "threshold": used, "label": label, "p_spam": p, "damaged": read.damaged,
            "headers": verdicts.mail_headers(label == positive, p, used, run_name),
        }  # fmt: skip
        if explain:  # the offsets index the text the model read, not the message's bytes: it comes with them
            answer.update(explanation=spans, window=window, text=text)
        return JSONResponse(answer)

    # ------------------------------------------------------------------------- service

    @app.get("/healthz", summary="Liveness and readiness")
    async def healthz() -> Response:
        """200 ``{"status": "ok"}`` while the model is loaded and the worker runs; 503 otherwise."""
        if batcher.running:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "stopping"}, status_code=503)

    @app.get("/v1/model", summary="The run being served")
    async def model_info() -> Response:
        cfg = classifier.config
        return JSONResponse({
            "run": run_name,
            "model": cfg.base_model or "custom",
            "shape": {k: getattr(cfg.model, k) for k in ("n_layers", "n_heads", "emb_dim", "context_length")},
            "labels": labels,
            "positive_label": positive,
            "threshold": classifier.threshold,
            "max_length": classifier.max_length,
            "pooling": cfg.pooling,
            "device": str(classifier.device),
            "precision": classifier.precision,
            "limits": {"max_texts": settings.max_texts, "max_explain_texts": settings.max_explain_texts,
                       "max_body_bytes": settings.max_body_bytes,
                       "max_mail_bytes": settings.max_mail_bytes},
            "version": __version__,
        })  # fmt: skip

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    # ------------------------------------------------------------------------- the page

    page = {name: resources.files("spamtune.serve").joinpath("static", name).read_bytes()
            for name in ("index.html", "app.css", "app.js")}  # fmt: skip

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page["index.html"], media_type="text/html; charset=utf-8")

    @app.get("/static/app.css", include_in_schema=False)
    async def stylesheet() -> Response:
        return Response(page["app.css"], media_type="text/css; charset=utf-8")

    @app.get("/static/app.js", include_in_schema=False)
    async def script() -> Response:
        return Response(page["app.js"], media_type="text/javascript; charset=utf-8")

    return app


class GuardMiddleware:
    """Around every HTTP request: the API key, or without one the Host and Origin checks
    (``browser_refusal``), security headers and the metrics.

    Plain ASGI rather than ``@app.middleware``: it adds no task per request, and it sees the
    requests that end in an exception too, so those count as errors.
    """

    def __init__(
        self, app, api_key: str | None, metrics: ServiceMetrics, browser_guard: bool = False,
        cors_origins: tuple[str, ...] = (),
    ):  # fmt: skip
        self.app = app
        self.api_key = api_key
        self.metrics = metrics
        self.browser_guard = browser_guard
        self.cors_origins = cors_origins

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        status = 500
        server_scope = scope  # the server's own, where it marks a request its parser answered
        if scope["method"] == "HEAD":
            # Answered as GET: FastAPI's routes take GET only, and a monitor checking /healthz
            # with HEAD would see 405, a service down. uvicorn drops the body, as it reads the
            # method from its own scope, not this copy.
            scope = dict(scope, method="GET")

        started = False

        async def send_with_headers(message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers[name] = value
                if path == "/":
                    headers["Content-Security-Policy"] = PAGE_CSP
            await send(message)

        # Both framings at once: h11 reads the body as chunked and keeps the connection, but a
        # proxy in front that goes by Content-Length would read the rest as another request
        # (request smuggling). Refused as the parser refuses a malformed head, and closed.
        ambiguous = _has_both_framings(scope)
        try:
            foreign = browser_refusal(scope, self.cors_origins) if self.browser_guard else None
            if ambiguous:
                refusal = JSONResponse({"error": "malformed HTTP request"}, 400, headers={"Connection": "close"})
                await refusal(scope, receive, send_with_headers)
            elif foreign is not None:
                await JSONResponse({"error": foreign}, status_code=403)(scope, receive, send_with_headers)
            elif (
                self.api_key and path not in _PUBLIC and not (self.cors_origins and _is_preflight(scope))
                and not _authorized(Headers(scope=scope), self.api_key)
            ):  # fmt: skip
                refusal = JSONResponse(
                    {"error": "missing or wrong API key (send 'Authorization: Bearer KEY')"},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
                await refusal(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when its graceful shutdown ends (30 s
            # after SIGTERM, or at a second Ctrl-C): it would answer them a plain-text 500 and log
            # a traceback. They get the service's 503 instead; the request task ends here anyway.
            if started:
                raise
            stopping = JSONResponse({"error": "the service is shutting down"}, 503, headers={"Connection": "close"})
            await stopping(scope, receive, send_with_headers)
        finally:
            if not server_scope.get(ANSWERED_BY_PARSER):  # counted there, under "malformed"
                endpoint = MALFORMED_ENDPOINT if ambiguous else path if path in _ENDPOINTS else "other"
                self.metrics.observe_request(endpoint, status, time.perf_counter() - start)


def _has_both_framings(scope) -> bool:
    names = {name for name, _ in scope["headers"]}
    return b"content-length" in names and b"transfer-encoding" in names


def _is_preflight(scope) -> bool:
    """A CORS preflight: browsers send it without credentials (so without the API key), and it
    runs nothing; the CORS middleware answers it."""
    return scope["method"] == "OPTIONS" and any(name == b"access-control-request-method" for name, _ in scope["headers"])


class JsonRefusalCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, but a preflight it refuses (an origin, method or header not allowed)
    gets the service's one-line JSON error rather than a plain-text body."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode("latin-1").replace("Disallowed CORS ", "")
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return JSONResponse({"error": f"CORS preflight refused: {reason} not allowed"}, response.status_code, headers)


def connection_limit_refusal(app: FastAPI, max_connections: int):
    """The ASGI app that answers a request arriving while the service already serves
    ``max_connections`` (the server's limit, see ``server.service_config``), in place of ``app``:
    503 with the service's error line and the connection closed, counted in ``app``'s metrics and
    given its headers like every other answer. No API key is asked: the answer tells nothing."""
    refusal = JSONResponse(
        {"error": f"too many connections: the service serves at most {max_connections:,} at once; retry later"},
        status_code=503, headers={"Connection": "close", "Retry-After": "1"},
    )  # fmt: skip
    return GuardMiddleware(refusal, api_key=None, metrics=app.state.metrics)


def malformed_request_counter(app: FastAPI) -> Callable[[], None]:
    """What counts, in ``app``'s metrics, a request the HTTP parser refused before any app ran:
    a 400 under the endpoint ``malformed``, with no latency (its start is not known)."""
    metrics: ServiceMetrics = app.state.metrics
    return lambda: metrics.count_answer(MALFORMED_ENDPOINT, 400)


NOT_LOCALHOST = (
    "this keyless service answers only requests addressed to localhost, 127.0.0.1 or [::1]; "
    "to serve it under another name, give it an API key"
)
CROSS_SITE = (
    "this service answers no other site's page (the request's Origin is not the service's own); "
    "--cors ORIGIN allows one"
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def browser_refusal(scope, cors_origins: tuple[str, ...] = ()) -> str | None:
    """Why a keyless service refuses this request (403), or None to serve it.

    Without a key, being on loopback is all that protects the service, and a browser on this
    machine is on loopback too. A page of another site can make it send a "simple" POST
    (``Content-Type: text/plain``, no CORS preflight), which the service would classify though
    the page cannot read the answer; browsers name that page's site in ``Origin`` (on every
    cross-origin request and on same-origin POSTs; curl and scripts send none), so an Origin
    other than the service's own is refused. A page whose host name is made to resolve to
    127.0.0.1 (DNS rebinding) is the service's own origin for the browser, and can read the
    answers; but its requests carry that name in ``Host``: only loopback names are served.
    A request without Host (HTTP/1.0) cannot come from a browser and is served.
    """
    hosts = [value.decode("latin-1") for name, value in scope["headers"] if name == b"host"]
    if len(hosts) > 1:  # no browser sends two; which one would a proxy or the router believe?
        return NOT_LOCALHOST
    host = _host_and_port(hosts[0]) if hosts and hosts[0] else ("localhost", "")
    if host is None or not _is_loopback_name(host[0]):
        return NOT_LOCALHOST
    origin = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"origin"), None)
    if origin is None or origin in cors_origins or "*" in cors_origins:
        return None
    scheme = scope.get("scheme", "http")
    own = (scheme, host[0], host[1] or _DEFAULT_PORTS.get(scheme, "")) if hosts and hosts[0] else None
    return None if own is not None and _origin_parts(origin) == own else CROSS_SITE


def _host_and_port(value: str) -> tuple[str, str] | None:
    """``(host, port)`` of a Host header, lower case, the port "" when not given; None when
    malformed. An IPv6 address keeps its brackets (``[::1]``)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]") + 1
        host, rest = value[:end], value[end:]
        if not end or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        host, _, port = value.partition(":")
        if ":" in port:  # an IPv6 address without brackets is no Host header
            return None
    if not host or (port and not port.isdigit()):
        return None
    return host, port


def _is_loopback_name(host: str) -> bool:
    """``localhost``, 127.x.y.z or ``[::1]``, as a Host header names them. Names that only
    ``/etc/hosts`` maps to loopback (``localhost.localdomain``) are not: DNS may answer for them."""
    if host == "localhost":
        return True
    try:
        if host.startswith("[") and host.endswith("]"):
            return ipaddress.IPv6Address(host[1:-1]).is_loopback
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


def is_origin(value: str) -> bool:
    """Whether ``value`` is an origin as browsers send it in ``Origin`` (``https://app.example``,
    ``http://127.0.0.1:3000``): what ``--cors`` takes, and all an Origin header is compared with."""
    return _origin_parts(value) is not None


def browser_form(origin: str) -> str:
    """An origin as a browser writes it in ``Origin``, which is compared with ``--cors``'s values
    string for string: scheme and host in lower case, no default port (``HTTPS://App.Example:443``
    is ``https://app.example``)."""
    origin = origin.strip().lower()
    scheme = origin.partition("://")[0]
    default = f":{_DEFAULT_PORTS.get(scheme)}"
    return origin[: -len(default)] if origin.endswith(default) else origin


def _origin_parts(origin: str) -> tuple[str, str, str] | None:
    """``(scheme, host, port)`` of an Origin header, in the form ``_host_and_port`` gives, the
    scheme's default port filled in; None for ``null`` or anything that is no origin."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = _host_and_port(parts.netloc) if parts.netloc and not (parts.path or parts.query or parts.fragment) else None
    if scheme not in _DEFAULT_PORTS or host is None or "@" in parts.netloc:
        return None
    return scheme, host[0], host[1] or _DEFAULT_PORTS[scheme]


def _authorized(headers: Headers, api_key: str) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    # Compared as bytes in constant time, so the answer's timing says nothing about the key.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def refuse_unknown_parameters(request: Request, allowed: tuple[str, ...], hint: str) -> None:
    """A 422 for a query parameter the endpoint does not read, or one given twice: ignored, a
    misspelt ``?treshold=0.8``, a ``?threshold=`` sent to /v1/classify, or the first of two
    (the last one wins), would apply another threshold than the one the client believes applies."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise ApiError(422, f"unknown query parameter {unknown[0]!r}: {hint}")
    repeated = next((name for name in allowed if len(request.query_params.getlist(name)) > 1), None)
    if repeated is not None:
        raise ApiError(422, f"query parameter {repeated!r} given {len(request.query_params.getlist(repeated))} times; give it once")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: of two, ``json`` keeps the last, so the
    first "threshold" a client (or a proxy's check) reads would not be the one applied."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ApiError(422, f"malformed JSON: the key {key!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


class BodyBudget:
    """The bytes of request bodies the service holds at once, across requests: a request that
    would take it past ``capacity`` is refused with 503 (retry later) rather than held.
    Used from the event loop only."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    @asynccontextmanager
    async def holding(self):
        """A request's share, given back when the block ends (its answer made, or its error)."""
        share = _BodyShare(self)
        try:
            yield share
        finally:
            self.held -= share.size


class _BodyShare:
    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow_to(self, size: int) -> None:
        extra = size - self.size
        if extra <= 0:
            return
        if self.budget.held + extra > self.budget.capacity:
            raise ApiError(
                503, f"the service holds {self.budget.capacity:,} bytes of request bodies already; retry later",
                {"Retry-After": "1", "Connection": "close"},
            )  # fmt: skip
        self.budget.held += extra
        self.size = size


async def read_body(request: Request, limit: int, timeout_s: float, share: _BodyShare) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes, with
    408 when it has not arrived whole within ``timeout_s`` seconds, and with 503 when the
    service's ``BodyBudget`` (of which ``share`` is this request's) cannot hold it."""
    declared = request.headers.get("content-length")
    too_large = ApiError(413, f"request body too large (at most {limit:,} bytes)")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length")
        if int(declared) > limit:
            raise too_large
        share.grow_to(int(declared))  # refused before a byte of it is read

    async def read() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
            share.grow_to(len(body))
        return bytes(body)

    try:
        # A deadline for the whole body, not for each piece: a byte every few seconds is no progress.
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        # Closed: the rest of the body may still come, and nothing else can be read before it.
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s", {"Connection": "close"}) from None
    except ClientDisconnect:  # the client left mid-body: its mistake, not a 500 with a traceback in the log
        raise ApiError(400, "the client disconnected before the request body ended") from None


def parse_classify_request(
    body: bytes, max_texts: int, max_explain_texts: int
) -> tuple[list[str], bool, float | None, bool]:
    """``(texts, single, threshold, explain)`` from a ``/v1/classify`` body, or a 422/413 ``ApiError`` with one line."""
    try:
        data = json.loads(body, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ApiError(422, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise ApiError(422, "malformed JSON: the body is not UTF-8") from None
    except RecursionError:  # arrays or objects nested thousands deep: a small body, no answer
        raise ApiError(422, "malformed JSON: nested too deeply") from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise ApiError(422, "malformed JSON: a number has too many digits") from None
    if not isinstance(data, dict):
        raise ApiError(422, 'the body must be a JSON object: {"texts": [...]} or {"text": "..."}')
    unknown = sorted(set(data) - {"texts", "text", "threshold", "explain"})
    if unknown:
        raise ApiError(
            422, f"unknown field {unknown[0]!r} (expected 'texts' or 'text', and optionally 'threshold' and 'explain')"
        )
    explain = data.get("explain", False)
    if not isinstance(explain, bool):
        raise ApiError(422, f'"explain" must be true or false, not {_json_type(explain)}')
    if ("texts" in data) == ("text" in data):
        raise ApiError(422, 'give exactly one of "texts" (a list of strings) or "text" (a string)')
    threshold = data.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ApiError(422, '"threshold" must be a number between 0 and 1')
        threshold = float(threshold)
    if "text" in data:
        if not isinstance(data["text"], str):
            raise ApiError(422, f'"text" must be a string, not {_json_type(data["text"])}')
        return [well_formed(data["text"])], True, threshold, explain
    texts = data["texts"]
    if not isinstance(texts, list):
        raise ApiError(422, f'"texts" must be a list of strings, not {_json_type(texts)}')
    if len(texts) > max_texts:
        raise ApiError(413, f"too many texts: {len(texts):,} (at most {max_texts:,} per request)")
    if explain and len(texts) > max_explain_texts:
        # Explaining a text takes up to 65 forward passes: a large request would hold the model for everyone.
        raise ApiError(413, f'too many texts to explain: {len(texts):,} (at most {max_explain_texts:,} with "explain")')
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(422, f'"texts" must hold strings only; item {i} is {_json_type(text)}')
    return [well_formed(text) for text in texts], False, threshold, explain


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)  # fmt: skip
