"""The web page of ``spamtune serve`` in a real browser: Playwright driving the system's Chromium.

No browser is downloaded: Playwright starts Debian's ``chromium`` package through its executable
path. In CI (``CI=true``) a missing browser or Playwright is a failure, not a skip; elsewhere
the test skips without them.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import P_HAM, P_SPAM, write_rigged_run
from running_service import call, running

from spamtune import __version__
from spamtune.infer import SpamClassifier
from spamtune.serve.app import create_app

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("SPAMTUNE_SCREENSHOTS")  # a folder: save what the browser showed, to look at
# A name the browser resolves to 127.0.0.1 as a DNS-rebinding attack makes it: no DNS involved.
REBOUND = "rebound.test"


def _need(condition: bool, why: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"{why}: CI must run the browser test (.ci/run installs it)")
        pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    _need(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "the playwright package is not installed (pip install 'spamtune[dev]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"],
        )  # fmt: skip
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    clf = SpamClassifier.load(write_rigged_run(tmp_path_factory.mktemp("page") / "rigged"), device="cpu")
    with running(create_app(clf)) as url:
        yield url


def _shot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def test_page_classifies_spam_and_ham(browser, service):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.goto(service + "/")
    page.wait_for_selector("#run:has-text('run rigged')")

    page.fill("#message", "WINNER!! You have won a free prize, call now to claim!")
    page.click("#classify")
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#verdict") == "spam"
    assert page.text_content("#p-spam") == f"{P_SPAM:.3f}"
    assert "is-spam" in page.get_attribute("#result", "class")
    assert page.text_content("#compare").startswith(f"{P_SPAM:.3f} ≥ threshold 0.500")
    assert page.is_hidden("#headers-box")
    # The page asked for explanations: the rigged run's verdict hangs on the final "!", so the
    # service's answer scores "claim!" (and nothing else) towards spam, and the page highlights it
    # in the message as written.
    page.wait_for_selector("#explanation-box:not([hidden])")
    assert page.text_content("#explanation") == "WINNER!! You have won a free prize, call now to claim!"
    assert page.eval_on_selector_all("#explanation span", "els => els.map(e => e.textContent)") == ["claim!"]
    colour = page.eval_on_selector("#explanation span", "e => e.style.backgroundColor")
    assert colour.startswith("rgba(214, 51, 108")
    _shot(page, "desktop-spam")

    page.fill("#message", "Are we still meeting for lunch tomorrow")
    page.press("#message", "Control+Enter")
    page.wait_for_selector("#verdict:has-text('ham')")
    assert page.text_content("#p-spam") == f"{P_HAM:.3f}"
    assert "is-ham" in page.get_attribute("#result", "class")
    assert page.text_content("#compare").startswith(f"{P_HAM:.3f} < threshold 0.500")
    assert page.evaluate("getComputedStyle(document.getElementById('meter-fill')).width") != "0px"
    assert page.is_hidden("#explanation-box")  # no word moves this verdict: nothing to highlight
    _shot(page, "desktop-ham")
    assert problems == []


def test_pasted_mail_goes_to_the_mail_endpoint_and_shows_the_header(browser, service):
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    page.goto(service + "/")
    page.wait_for_selector("#run:has-text('run rigged')")
    page.fill("#message", "From: desk@example.com\nSubject: act now\n\nReply YES to claim your reward!\n")
    assert page.is_checked("#as-mail")  # headers then a blank line: read as an e-mail
    page.click("#classify")
    page.wait_for_selector("#headers-box:not([hidden])")
    assert page.text_content("#verdict") == "spam"
    assert page.text_content("#headers") == (
        f"X-Spamtune-Status: Yes, p_spam={P_SPAM:.3f}, threshold=0.5\nX-Spamtune-Run: rigged; spamtune {__version__}"
    )
    # The words that drove it, highlighted in the text the model read of the message (the
    # rigged run's verdict hangs on the final "!").
    page.wait_for_selector("#explanation-box:not([hidden])")
    assert page.text_content("#explanation") == "act now Reply YES to claim your reward!"
    assert page.eval_on_selector_all("#explanation span", "els => els.map(e => e.textContent)") == ["reward!"]
    # A phone-wide page never scrolls sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    _shot(page, "phone-mail")


def test_an_opened_eml_file_is_sent_as_its_bytes(browser, service):
    """A message in another charset than UTF-8 (8-bit Latin-1, as mail often is): read as UTF-8
    text, its é became U+FFFD before the page sent it, and the service read mojibake where
    `predict --mail` reads the file's own bytes. The page sends the file's bytes, while unedited."""
    raw = (b"Subject: offre\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n"
           b"Caf\xe9 gratuit, r\xe9pondez!\n")  # fmt: skip
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(service + "/")
    page.wait_for_selector("#run:has-text('run rigged')")
    page.set_input_files("#file", files=[{"name": "offre.eml", "mimeType": "message/rfc822", "buffer": raw}])
    page.wait_for_selector("#headers-box:not([hidden])")
    page.wait_for_selector("#explanation-box:not([hidden])")
    assert page.text_content("#explanation") == "offre Café gratuit, répondez!"
    assert page.text_content("#file-name") == "offre.eml"


def test_explanations_are_highlighted_as_text_never_as_markup(browser, service):
    """When an answer carries explanation spans the page highlights them, writing them as text."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    spans = [{"text": "Claim", "start": 0, "end": 5, "score": 0.9},
             {"text": "<img", "start": 6, "end": 10, "score": -0.4},
             {"text": "now", "start": 35, "end": 38, "score": 0.01},
             {"text": "off the end", "start": 30, "end": 99, "score": 5.0}]  # fmt: skip
    answer = {"run": "rigged", "threshold": 0.5, "label": "spam", "p_spam": 0.93, "explanation": spans}
    page.route("**/v1/classify", lambda route: route.fulfill(status=200, content_type="application/json",
                                                              body=json.dumps(answer)))  # fmt: skip
    page.goto(service + "/")
    page.fill("#message", "Claim <img src=x onerror=alert(1)> now")
    page.click("#classify")
    page.wait_for_selector("#explanation-box:not([hidden])")
    assert page.text_content("#explanation") == "Claim <img src=x onerror=alert(1)> now"
    assert page.eval_on_selector_all("#explanation span", "els => els.map(e => e.textContent)") == ["Claim", "<img", "now"]
    assert page.eval_on_selector_all("#explanation img, #result img", "els => els.length") == 0
    colours = page.eval_on_selector_all("#explanation span", "els => els.map(e => e.style.backgroundColor)")
    assert colours[0].startswith("rgba(214, 51, 108") and colours[1].startswith("rgba(43, 138, 62")
    assert colours[2] == ""  # too weak to colour
    _shot(page, "desktop-explanation")


def test_errors_show_as_one_line(browser, service):
    page = browser.new_page()
    page.goto(service + "/")
    page.click("#classify")
    assert page.text_content("#error") == "Paste a message first."
    page.route("**/v1/classify", lambda route: route.fulfill(status=413, content_type="application/json",
                                                              body='{"error": "request body too large"}'))  # fmt: skip
    page.fill("#message", "hello")
    page.click("#classify")
    page.wait_for_selector("#error:has-text('too large')")
    assert page.is_hidden("#result")


@pytest.fixture(scope="module")
def elsewhere():
    """Another site's page, as a browser on this machine may have open: a blank page on another
    port of loopback, at http://localhost:PORT (another origin than the service's)."""

    class Blank(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>elsewhere</title><p>another site"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Blank)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(10)


def _counter(service: str, sample: str) -> float:
    for line in call(service + "/metrics")[2].decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_another_sites_page_cannot_make_the_browser_call_the_api(browser, service, elsewhere):
    """A "simple" cross-site POST (text/plain, no preflight; the page cannot read the answer)
    still reaches the service: refused with 403 before any work, as the browser names the page's
    origin in Origin; and counted."""
    page = browser.new_page()
    page.goto(elsewhere)
    refused = 'spamtune_http_errors_total{code="403",endpoint="%s"}'
    before = {path: _counter(service, refused % path) for path in ("/v1/classify", "/v1/classify/mail")}
    classified = _counter(service, "spamtune_messages_classified_total")
    sent = page.evaluate(
        """async service => {
            const simple = (path, body) => fetch(service + path, { method: "POST", mode: "no-cors",
                                                                   headers: { "Content-Type": "text/plain" }, body });
            await simple("/v1/classify", JSON.stringify({ text: "WINNER!! claim your prize" }));
            await simple("/v1/classify/mail", "Subject: hi\\n\\nclaim your prize!");
            return true;
        }""",
        service,
    )
    assert sent is True
    for path, count in before.items():
        assert _counter(service, refused % path) == count + 1, path
    assert _counter(service, "spamtune_messages_classified_total") == classified


def test_a_rebound_host_name_gets_no_page_and_no_answer(browser, service):
    """DNS rebinding: a name of the attacker's resolving to 127.0.0.1 makes its page the
    service's own origin; the service answers nothing addressed to that name."""
    port = service.rsplit(":", 1)[1]
    page = browser.new_page()
    response = page.goto(f"http://{REBOUND}:{port}/")
    assert response.status == 403 and "answers only requests addressed to localhost" in response.json()["error"]
    # The same page, as served at its loopback address, works.
    assert page.goto(f"http://localhost:{port}/").status == 200
    page.wait_for_selector("#run:has-text('run rigged')")
