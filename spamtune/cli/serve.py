"""``spamtune serve``: load a run once and classify over HTTP (the API and a web page).

Only option checks and taking the port happen before the model loads; the service reports ready (one line on
stderr, and /healthz) once the run is loaded and warmed up. FastAPI, uvicorn and torch are
imported inside the command so `spamtune --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from spamtune.cli import common

from spamtune.errors import SpamtuneError, SpamtuneUsageError

SERVE_HELP = (
    "Serve a fine-tuned run over HTTP: a JSON API (/v1/classify, /v1/classify/mail, /v1/model, /healthz, "
    "/metrics), its OpenAPI page (/docs) and a web page (/) to paste a message into.\n\n"
    "The run is loaded once; the service is ready when 'ready on URL' is printed on stderr. Requests that "
    "arrive together share forward passes (dynamic batching). It listens on 127.0.0.1 only unless --host says "
    "otherwise, and any other address requires an API key (--api-key or SPAMTUNE_API_KEY), which clients send "
    "as 'Authorization: Bearer KEY'. Without a key it answers only requests addressed to localhost, 127.0.0.1 or "
    "[::1], and none from another site's page (an Origin header other than its own or --cors's). SIGTERM or Ctrl-C stops accepting connections, finishes the requests in "
    "flight and exits 0; a second Ctrl-C stops at once (exit 130)."
)

MIN_KEY_LENGTH = 16


class StoppedAtOnce(SpamtuneError):
    """A second Ctrl-C cut the requests in flight short: Ctrl-C's exit status, as every command's."""

    exit_code = 130


@common.examples(
    ("spamtune serve", "the newest finished run on http://127.0.0.1:8080"),
    ("spamtune serve --run 20261125-101500-tiny-all --port 0", "a run by name, on any free port"),
    ("SPAMTUNE_API_KEY=$(openssl rand -hex 16) spamtune serve --host 0.0.0.0", "beyond loopback, with a key"),
)
def serve(
    run: str | None = common.run_option(),
    data_dir: Path | None = common.data_dir_option(),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs an API key."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="TCP port (0: any free port, printed when ready)."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="SPAMTUNE_API_KEY", show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on the API and /metrics. Prefer the variable: arguments show in ps.",
    ),
    cors: list[str] = typer.Option(
        [], "--cors", metavar="ORIGIN", help="Allow browser pages from ORIGIN to call the API (repeatable). Off by default."
    ),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Label a message spam when its spam probability is at least this. " + common.THRESHOLD_SCOPE,
        show_default="the run's calibrated threshold (spamtune calibrate), else 0.5",
    ),
    device: str = common.device_option(),
    precision: str = common.precision_option(),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Messages per model batch (as for predict)."),
    max_batch: int = typer.Option(128, "--max-batch", min=1, help="Messages per forward pass shared by concurrent requests."),
    max_wait_ms: float = typer.Option(
        50.0, "--max-wait-ms", min=0.0, max=1000.0,
        help="While busy, how long a pass may wait for more requests to fill up, and never more than 5% of the "
        "previous pass's time (an idle service answers at once).",
    ),
    max_texts: int = typer.Option(256, "--max-texts", min=1, help="Texts per /v1/classify request (more: 413)."),
    max_explain_texts: int = typer.Option(
        8, "--max-explain-texts", min=1,
        help='Texts per /v1/classify request with "explain" (more: 413); each costs up to 65 forward passes.',
    ),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1, help="JSON request size limit (more: 413)."),
    max_mail_bytes: int = typer.Option(10 << 20, "--max-mail-bytes", min=1, help="Raw message size limit (more: 413)."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request on stderr."),
) -> None:
    """Check the options, load and warm up the run, then serve until SIGTERM/Ctrl-C (help: SERVE_HELP)."""
    from spamtune.serve.server import is_loopback

    api_key = api_key or None  # an empty SPAMTUNE_API_KEY means none
    if not is_loopback(host) and api_key is None:
        raise SpamtuneUsageError(
            f"--host {host} makes the service reachable from other machines: give an API key with "
            "SPAMTUNE_API_KEY (or --api-key)"
        )
    from spamtune.client import API_KEY_RULE, is_valid_api_key

    if api_key is not None and not is_valid_api_key(api_key):
        raise SpamtuneUsageError(API_KEY_RULE)
    if api_key is not None and len(api_key) < MIN_KEY_LENGTH:
        raise SpamtuneUsageError(
            f"the API key is too short (at least {MIN_KEY_LENGTH} characters; e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe())'`)"
        )

    try:
        from spamtune.serve.app import ServeSettings, create_app
        from spamtune.serve.server import Outcome, listen_failure, listening_sockets, print_ready, serve_app
    except ImportError as exc:
        raise SpamtuneError(f"spamtune serve needs its extra: pip install 'spamtune[serve]' ({exc.name} is missing)") from None
    from spamtune.infer import SpamClassifier
    from spamtune.serve.app import browser_form, is_origin
    from spamtune.threads import call_on_passing_thread

    # An Origin header is compared with each whole: "https://app.example/" (an address copied
    # with its slash) never matched, and the page it was meant for was refused, while "null"
    # let any sandboxed page of any site call the service and read its answers.
    for origin in cors:
        if origin != "*" and not is_origin(origin):
            raise SpamtuneUsageError(
                f"--cors {origin!r} is not an origin: give it as a browser sends it, scheme://host[:port] "
                "with no path (e.g. https://app.example)"
            )
    cors = [origin if origin == "*" else browser_form(origin) for origin in cors]

    # The port is taken before the run loads: a taken port or a wrong --host fails at once, not
    # after seconds (minutes for a large model) of loading and warming up.
    try:
        sockets = listening_sockets(host, port)
    except OSError as exc:
        raise SpamtuneError(listen_failure(host, port, exc)) from None
    # A name is taken for loopback above, but the resolver decides where it points: /etc/hosts
    # or DNS may map localhost.localdomain to an address other machines reach.
    exposed = [sock.getsockname()[0] for sock in sockets if not is_loopback(sock.getsockname()[0])]
    if exposed and api_key is None:
        for sock in sockets:
            sock.close()
        raise SpamtuneUsageError(
            f"--host {host} resolves to {exposed[0]}, which makes the service reachable from other machines: "
            "give an API key with SPAMTUNE_API_KEY (or --api-key)"
        )

    def load() -> SpamClassifier:
        # few_shapes: the service's passes meet a bounded set of batch shapes, so its memory
        # stops growing once it has met them (predict_logits says why).
        classifier = SpamClassifier.load(
            run, device=device, data_dir=data_dir, threshold=threshold, batch_size=batch_size, precision=precision,
            few_shapes=True,
        )  # fmt: skip
        classifier.predict(["warm-up: the first pass allocates what later ones reuse"])
        return classifier

    try:
        # From here on all model work runs on the batcher's thread: only its OpenMP pool remains.
        classifier = call_on_passing_thread(load)
        settings = ServeSettings(
            max_body_bytes=max_body_bytes, max_mail_bytes=max_mail_bytes, max_texts=max_texts,
            max_explain_texts=max_explain_texts, max_batch=max_batch, max_wait_ms=max_wait_ms, api_key=api_key,
            cors_origins=tuple(cors),
        )  # fmt: skip
        typer.echo(common.one_line(f"spamtune serve: {classifier!r}"), err=True)  # it names the run's folder
        outcome = serve_app(create_app(classifier, settings), sockets, on_ready=print_ready, access_log=access_log)
        if outcome is Outcome.FAILED:
            raise SpamtuneError(f"could not serve on {host}:{port} (see the line above)")
        if outcome is Outcome.STOPPED_AT_ONCE:
            raise StoppedAtOnce("interrupted again: stopped without waiting for the requests in flight")
    finally:
        for sock in sockets:
            sock.close()


def register(app: typer.Typer) -> None:
    common.add_command(app, "serve", serve, help=SERVE_HELP)
