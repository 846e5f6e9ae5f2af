"""``spamtune serve``: answers equal to ``predict``'s, dynamic batching, limits, errors, auth, shutdown.

Every service here listens on 127.0.0.1 only, on a free port, and every load is a few hundred
requests at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import HAM, SPAM, TINY, write_rigged_run
from running_service import call, call_json, running
from typer.testing import CliRunner

from spamtune import __version__, checkpoint
from spamtune.cli import app as cli_app
from spamtune.errors import SpamtuneError
from spamtune.infer import SpamClassifier
from spamtune.long_messages import predict_long
from spamtune.options import DEFAULT_LONG
from spamtune.serve.app import CROSS_SITE, ServeSettings, create_app
from spamtune.serve.batcher import DynamicBatcher
from spamtune.mail import message_text

REPO = Path(__file__).resolve().parents[1]
KEY = "k" * 12 + "-test-key-0123"


def varied_messages(n: int = 300) -> list[str]:
    """``n`` different messages: spam and ham mixed, short and cut-off long ones, unicode, an empty one."""
    pool = SPAM + HAM
    out = []
    for i in range(n):
        text = f"{pool[i % len(pool)]} {pool[(i * 7 + 3) % len(pool)].lower()} #{i}"
        if i % 17 == 0:
            text = (text + " ") * 12  # beyond the run's 64 tokens: its start is kept
        if i % 23 == 0:
            text = "café, naïve — ünïcödé ✓ " + text
        out.append(text)
    out[5] = ""
    return out


@pytest.fixture(scope="module")
def random_run(tmp_path_factory) -> Path:
    """A tiny run with random weights: probabilities spread around 0.5, so labels differ."""
    run_dir = tmp_path_factory.mktemp("serve") / "random-run"
    cfg = checkpoint.ClassifierConfig(model=TINY, labels={"ham": 0, "spam": 1}, pooling="last-real", max_length=64)
    torch.manual_seed(3)
    checkpoint.save_classifier(run_dir, checkpoint.build_classifier(cfg), cfg)
    return run_dir


@pytest.fixture(scope="module")
def clf(random_run) -> SpamClassifier:
    # As `spamtune serve` and `spamtune predict` load it: batch shapes rounded (few_shapes).
    return SpamClassifier.load(random_run, device="cpu", precision="fp32", few_shapes=True)


@pytest.fixture(scope="module")
def service(clf):
    """One service for the read-only tests, with room for a whole test file in one request."""
    with running(create_app(clf, ServeSettings(max_texts=512, max_batch=512))) as url:
        yield url


def classify(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    return call_json(url + "/v1/classify", "POST", body, headers)


# ----------------------------------------------------------------------------- same answers as predict


def test_server_and_predict_agree_exactly(service, random_run, clf, tmp_path):
    """The same messages through `spamtune predict --file` and the service: identical labels and p_spam."""
    texts = varied_messages()
    inbox = tmp_path / "inbox.txt"
    inbox.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    local = CliRunner().invoke(
        cli_app, ["predict", "--run", str(random_run), "--precision", "fp32", "--file", str(inbox), "--format", "jsonl"]
    )
    assert local.exit_code == 0, local.stderr
    expected = [json.loads(line) for line in local.stdout.splitlines()]
    assert len(expected) == len(texts) and {r["label"] for r in expected} == {"spam", "ham"}

    # predict reads chunks of 32, 64, 128... lines (the first answers come after one batch), and
    # which messages share a padded batch moves the last bits of a float: send the same chunks.
    chunks, start, size = [], 0, 32
    while start < len(texts):
        chunks.append(texts[start : start + size])
        start, size = start + size, 2 * size
    results = []
    for chunk in chunks:
        status, answer = classify(service, {"texts": chunk})
        assert status == 200
        assert answer["run"] == "random-run" and answer["threshold"] == 0.5
        results += answer["results"]
    assert [r["label"] for r in results] == [r["label"] for r in expected]
    # predict's jsonl rounds to 6 decimals; the service sends the float itself.
    assert [round(r["p_spam"], 6) for r in results] == [r["p_spam"] for r in expected]

    # Client mode prints exactly what local predict prints.
    remote = CliRunner().invoke(cli_app, ["predict", "--server", service, "--file", str(inbox), "--format", "jsonl"])
    assert remote.exit_code == 0, remote.stderr
    assert remote.stdout == local.stdout


def test_single_text_threshold_and_truncation_follow_the_classifier(service, clf):
    text = SPAM[0] + " and more" * 40  # well past 64 tokens
    status, answer = classify(service, {"text": text})
    expected = clf.predict(text)
    assert status == 200 and (answer["label"], answer["p_spam"]) == (expected.label, expected.probability)
    # A request's own threshold decides the label the way SpamClassifier's threshold does.
    p = expected.probability
    for threshold, label in ((p, "spam"), (min(1.0, p + 1e-6), "ham"), (0.0, "spam"), (1.0, "ham" if p < 1 else "spam")):
        status, answer = classify(service, {"text": text, "threshold": threshold})
        assert status == 200 and answer["label"] == label and answer["threshold"] == threshold
    assert classify(service, {"texts": []}) == (200, {"run": "random-run", "threshold": 0.5, "results": []})


def test_explanations_are_predicts_and_map_back_to_the_text(service, clf):
    """``"explain": true`` adds ``predict --explain``'s spans, whose offsets index the submitted text."""
    texts = ["WINNER!! Claim your free prize now, text WIN to 80086", "café ✓ naïve 🎉 lunch at 1?", SPAM[1], ""]
    status, answer = classify(service, {"texts": texts, "explain": True})
    assert status == 200 and len(answer["results"]) == len(texts)
    # Compared with the same texts classified together: which texts share a batch changes the
    # padding, and so the floating-point sums, by about 1e-7 (see the README).
    for text, result, expected, explained in zip(texts, answer["results"], clf.predict(texts), clf.explain(texts)):
        assert (result["label"], result["p_spam"]) == (expected.label, pytest.approx(expected.probability, abs=1e-6))
        wanted = explained.top(3)  # what predict --explain --format jsonl prints
        assert [(s["text"], s["start"], s["end"]) for s in result["explanation"]] == [
            (s["text"], s["start"], s["end"]) for s in wanted
        ]
        assert [s["score"] for s in result["explanation"]] == pytest.approx([s["score"] for s in wanted], abs=1e-4)
        for span in result["explanation"]:
            assert set(span) == {"text", "start", "end", "score"}
            assert text[span["start"] : span["end"]] == span["text"] != ""
    assert any(result["explanation"] for result in answer["results"])
    status, single = classify(service, {"text": texts[1], "explain": True})
    assert status == 200
    assert [s["text"] for s in single["explanation"]] == [s["text"] for s in answer["results"][1]["explanation"]]
    # Offsets count characters, not UTF-16 units or bytes: spans after the emoji still match.
    assert any(span["start"] > texts[1].index("🎉") for span in single["explanation"])
    status, plain = classify(service, {"text": texts[1]})  # no explanation unless asked for
    assert status == 200 and "explanation" not in plain and "window" not in plain
    assert plain["p_spam"] == pytest.approx(single["p_spam"], abs=1e-6)


def test_predict_explain_with_a_server_prints_what_it_prints_locally(service, random_run, tmp_path):
    """``predict --server --explain`` prints, in every format, what local ``predict --explain``
    prints: the same spans, marked the same way, the same window notes."""
    texts = ["WINNER!! Claim your free prize now, text WIN to 80086", "café ✓ naïve 🎉 lunch at 1?", SPAM[1], "",
             "Привет 🎉 " + "see you at lunch " * 40 + "WIN a prize!"]  # fmt: skip
    inbox = tmp_path / "inbox.txt"
    inbox.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    printed = {}
    for fmt in (["--format", "text"], ["--format", "tsv", "--header"], ["--format", "jsonl"]):
        local = CliRunner().invoke(cli_app, ["predict", "--run", str(random_run), "--precision", "fp32", "--explain", *fmt, "--file", str(inbox)])
        remote = CliRunner().invoke(cli_app, ["predict", "--server", service, "--explain", *fmt, "--file", str(inbox)])
        assert local.exit_code == remote.exit_code == 0, (local.stderr, remote.stderr)
        assert remote.stdout == local.stdout and len(local.stdout.splitlines()) == len(texts) + (fmt[1] == "tsv")
        printed[fmt[1]] = remote.stdout
    # Marked spans in text, and the long text's note that only its head was read and explained.
    assert "[+" in printed["text"] and printed["text"].splitlines()[4].split("  ")[2].startswith("(explains chars 0-")
    records = [json.loads(line) for line in remote.stdout.splitlines()]
    assert any(r["explanation"] for r in records) and records[4]["window"][0]["end"] < len(texts[4])


def test_predict_explain_with_a_server_sends_what_the_service_explains_in_one_request(clf, tmp_path):
    """The service explains at most ``max_explain_texts`` texts a request: the client sends no more."""
    texts = [f"{SPAM[i % len(SPAM)]} #{i}" for i in range(5)]
    with running(create_app(clf, ServeSettings(max_explain_texts=2))) as url:
        remote = CliRunner().invoke(cli_app, ["predict", "--server", url, "--explain", "--format", "jsonl", *texts])
    assert remote.exit_code == 0, remote.stderr
    records = [json.loads(line) for line in remote.stdout.splitlines()]
    assert [r["text"] for r in records] == texts
    for record, expected in zip(records, clf.explain(texts)):
        assert [(s["text"], s["start"], s["end"]) for s in record["explanation"]] == [
            (s["text"], s["start"], s["end"]) for s in expected.top(3)
        ]


def test_an_explanation_names_the_window_it_explains(service, clf):
    """A text longer than the run's window is read, and explained, from its head: the answer
    says which part of it, as predict --explain does, so that a client does not take the spans
    for the whole text's."""
    long_text = "Привет 🎉 " + "see you at lunch " * 40 + "WIN a prize!"
    status, answer = classify(service, {"texts": [long_text, "hi"], "explain": True})
    assert status == 200
    (head,), (whole,) = [result["window"] for result in answer["results"]]
    assert head == clf.explain(long_text).window_list()[0] and (head["token_start"], head["token_end"]) == (0, clf.max_length)
    assert 0 == head["start"] < head["end"] < len(long_text) and whole == {"start": 0, "end": 2, "token_start": 0, "token_end": 1}
    assert all(span["end"] <= head["end"] for span in answer["results"][0]["explanation"])


def test_a_lone_surrogate_reads_as_a_replacement_character(service, clf):
    """JSON may escape half a surrogate pair ("\\ud800"): no UTF-8 answer can carry it back in an
    explanation, so it reads as U+FFFD, as the tokenizer reads it, one character for one."""
    for body in ({"text": "WIN \ud800 prize", "explain": True}, {"texts": ["WIN \ud800 prize"], "explain": True}):
        status, answer = classify(service, body)
        assert status == 200, answer
        result = answer if "text" in body else answer["results"][0]
        expected = clf.explain("WIN \ufffd prize").top(3)
        assert [(s["text"], s["start"], s["end"]) for s in result["explanation"]] == [
            (s["text"], s["start"], s["end"]) for s in expected
        ]
        assert result["p_spam"] == pytest.approx(clf.predict("WIN \ud800 prize").probability, abs=1e-6)


def test_the_client_sends_a_lone_surrogate_as_the_service_reads_it(service, clf):
    """A Python caller's text may hold half a surrogate pair (a file name or bytes read with
    surrogateescape): the client sent it as UTF-8, which cannot hold one, and raised a
    UnicodeEncodeError rather than classify it as the service reads it, as U+FFFD."""
    from spamtune.client import SpamtuneClient

    client = SpamtuneClient(service)
    (verdict,) = client.classify(["WIN \udcff prize"])
    assert verdict.p_spam == pytest.approx(clf.predict("WIN \ufffd prize").probability, abs=1e-6)
    (explained,) = client.classify(["WIN \udcff prize"], explain=True)
    expected = clf.explain("WIN \ufffd prize").top(3)
    spans = [(s["text"], s["start"], s["end"]) for s in explained.explanation.top(3)]
    assert "\ufffd" in {text for text, _, _ in spans} and spans == [(s["text"], s["start"], s["end"]) for s in expected]


def test_concurrent_requests_get_their_own_answers(service, clf):
    """Many clients at once, single texts and lists mixed: each gets the answers for its own texts."""
    texts = varied_messages(240)
    expected = clf.predict(texts)
    requests = [texts[i : i + 1] if i % 3 else texts[i : i + 8] for i in range(0, 240, 4)]

    def one(part):
        return part, classify(service, {"texts": part})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, requests))
    by_text = {p.text: p for p in expected}
    for part, (status, answer) in answers:
        assert status == 200 and len(answer["results"]) == len(part)
        for text, result in zip(part, answer["results"]):
            assert result["label"] == by_text[text].label
            # Batch composition changes fp32 sums in their last bit, as between two predict calls.
            assert result["p_spam"] == pytest.approx(by_text[text].probability, abs=1e-6)


def test_requests_waiting_together_share_one_forward_pass():
    """While a pass runs, arrivals queue; the next pass takes them all (up to max_batch), one kind at a time."""
    import asyncio

    release = threading.Event()
    passes: list[tuple[str, list[str]]] = []

    def predictor(kind):
        def predict(texts):
            passes.append((kind, list(texts)))
            if len(passes) == 1:
                release.wait(10)
            return [f"{kind}:{t.upper()}" for t in texts]

        return predict

    batcher = DynamicBatcher(
        {kind: predictor(kind) for kind in ("text", "mail", "explain")}, max_batch=5, max_wait_s=0.001,
        kind_max_batch={"explain": 2},
    )  # fmt: skip
    batcher.start()

    async def scenario():
        first = asyncio.ensure_future(batcher.classify(["a"]))
        while not passes:
            await asyncio.sleep(0.001)
        queued = [("bc", "text"), ("d", "text"), ("ef", "text"), ("g", "text"), ("m", "mail"), ("hi", "text"),
                  ("x", "explain"), ("y", "explain"), ("z", "explain")]  # fmt: skip
        later = [asyncio.ensure_future(batcher.classify(list(t), kind)) for t, kind in queued]
        await asyncio.sleep(0.05)  # all are queued behind the blocked first pass
        release.set()
        return await first, await asyncio.gather(*later)

    first, later = asyncio.run(scenario())
    batcher.stop(5)
    assert first == ["text:A"]
    assert later == [["text:B", "text:C"], ["text:D"], ["text:E", "text:F"], ["text:G"], ["mail:M"], ["text:H", "text:I"],
                     ["explain:X"], ["explain:Y"], ["explain:Z"]]  # fmt: skip
    # bc + d + ef fill 5; g does not fit and opens the next pass, which the mail request ends.
    # Explanations have their own, smaller limit: 2 texts a pass.
    assert passes == [("text", ["a"]), ("text", ["b", "c", "d", "e", "f"]), ("text", ["g"]), ("mail", ["m"]),
                      ("text", ["h", "i"]), ("explain", ["x", "y"]), ("explain", ["z"])]  # fmt: skip


def test_a_busy_pass_lingers_only_a_share_of_the_last_one():
    """A pass that finds requests waiting may wait for more, but never longer than a twentieth
    of the previous pass: waiting must not idle the model. An idle service waits not at all."""
    import asyncio

    release = threading.Event()
    passes: list[list[str]] = []

    def predict(texts):
        passes.append(list(texts))
        if len(passes) == 1:
            release.wait(10)
        return list(texts)

    batcher = DynamicBatcher({"text": predict}, max_batch=100, max_wait_s=5.0)
    batcher.start()

    async def scenario():
        first = asyncio.ensure_future(batcher.classify(["a"]))
        while not passes:
            await asyncio.sleep(0.001)
        # Two requests wait behind a ~0.2 s pass: the next pass takes both and may linger.
        queued = [asyncio.ensure_future(batcher.classify([t])) for t in ("b", "c")]
        await asyncio.sleep(0.2)
        release.set()
        start = time.perf_counter()
        await first, await asyncio.gather(*queued)
        busy = time.perf_counter() - start
        await asyncio.sleep(0.1)
        start = time.perf_counter()
        await batcher.classify(["d"])
        return busy, time.perf_counter() - start

    busy, idle = asyncio.run(scenario())
    batcher.stop(5)
    assert passes == [["a"], ["b", "c"], ["d"]]
    assert busy < 2.0  # lingered ~10 ms (5% of 0.2 s), not max_wait_s
    assert idle < 1.0


# ----------------------------------------------------------------------------- bad requests


@pytest.fixture(scope="module")
def strict_service(tmp_path_factory):
    """Small limits, and a classifier that fails on one text, to check the refusals."""
    clf = SpamClassifier.load(write_rigged_run(tmp_path_factory.mktemp("strict") / "rigged"), device="cpu")

    class Fragile:
        def __getattr__(self, name):
            return getattr(clf, name)

        def predictions(self, texts, probabilities):  # the last step of every prediction
            if "explode" in texts:
                raise RuntimeError(f"boom in {REPO}/secret/path.py")
            return clf.predictions(texts, probabilities)

    settings = ServeSettings(max_body_bytes=2_000, max_mail_bytes=3_000, max_texts=4, max_explain_texts=2)
    app = create_app(Fragile(), settings)
    with running(app) as url:
        yield url


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b'{"texts": ["a", "b"', 422, "malformed JSON"),
        (b"\xff\xfe not json", 422, "malformed JSON"),
        (b'["a"]', 422, "must be a JSON object"),
        (b'{"texts": "a"}', 422, '"texts" must be a list of strings, not a string'),
        (b'{"texts": ["a", 3]}', 422, "item 1 is a number"),
        (b'{"text": null}', 422, '"text" must be a string, not null'),
        (b'{"text": "a", "texts": ["b"]}', 422, "exactly one of"),
        (b"{}", 422, "exactly one of"),
        (b'{"text": "a", "threshold": 2}', 422, "between 0 and 1"),
        (b'{"text": "a", "threshold": true}', 422, "between 0 and 1"),
        (b'{"txt": "a"}', 422, "unknown field 'txt'"),
        (b'{"texts": ["a", "b", "c", "d", "e"]}', 413, "too many texts: 5 (at most 4"),
        (b'{"texts": ["a", "b", "c"], "explain": true}', 413, 'too many texts to explain: 3 (at most 2 with "explain")'),
        (b'{"text": "a", "explain": "yes"}', 422, '"explain" must be true or false, not a string'),
        (json.dumps({"text": "x" * 3_000}).encode(), 413, "request body too large"),
    ],
)
def test_bad_requests_get_one_line_reasons(strict_service, body, status, reason):
    code, headers, payload = call(strict_service + "/v1/classify", "POST", body, {"Content-Type": "application/json"})
    assert code == status
    answer = json.loads(payload)
    assert set(answer) == {"error"} and reason in answer["error"] and "\n" not in answer["error"]


def test_query_parameters_an_endpoint_does_not_read_are_refused(service):
    """A threshold in the query of /v1/classify (whose options are in the body), or a misspelt
    one on /v1/classify/mail, would be ignored and the service's threshold applied unseen."""
    for path, body, reason in (
        ("/v1/classify?threshold=0.9", {"text": "a"}, "unknown query parameter 'threshold': /v1/classify takes its options in the JSON body"),
        ("/v1/classify/mail?treshold=0.9", b"Subject: hi\n\nyo", "unknown query parameter 'treshold': /v1/classify/mail takes ?threshold= and ?explain= only"),
    ):  # fmt: skip
        status, answer = call_json(service + path, "POST", body)
        assert status == 422 and answer["error"].startswith(reason), answer
    status, answer = call_json(service + "/v1/classify/mail?threshold=0.9", "POST", b"Subject: hi\n\nyo")
    assert status == 200 and answer["threshold"] == 0.9


def test_a_threshold_given_twice_is_refused_not_the_last_one_taken(service):
    """Of two, the last was applied: a client, or a proxy checking the first, would believe
    another threshold applied than the one that did."""
    status, answer = call_json(service + "/v1/classify/mail?threshold=0.1&threshold=0.9", "POST", b"Subject: hi\n\nyo")
    assert (status, answer) == (422, {"error": "query parameter 'threshold' given 2 times; give it once"})
    body = b'{"text": "hi", "threshold": 0.1, "threshold": 0.9}'
    status, answer = call_json(service + "/v1/classify", "POST", body)
    assert (status, answer) == (422, {"error": "malformed JSON: the key 'threshold' appears twice in one object"})
    many_keys = b"{" + b", ".join(b'"k%d": 1' % i for i in range(50_000)) + b', "text": "hi"}'
    started = time.monotonic()
    assert call_json(service + "/v1/classify", "POST", many_keys)[0] == 422  # unknown field, found at once
    assert time.monotonic() - started < 2


def test_a_run_of_three_classes_refuses_a_requests_threshold(tmp_path):
    """Such a run decides by the most probable class: a request's threshold would be ignored
    while the answer claimed it, so it is refused with the reason."""
    clf = SpamClassifier.load(write_rigged_run(tmp_path / "three", labels={"ham": 0, "spam": 1, "promo": 2}), device="cpu")
    reason = "cannot apply: the run has 3 classes (ham, spam, promo) and decides by the most probable one"
    with running(create_app(clf)) as url:
        assert classify(url, {"texts": ["hi!", "hi"]})[1]["results"][0]["label"] == "spam"
        status, answer = classify(url, {"text": "hi!", "threshold": 0.3})
        assert status == 422 and answer["error"].startswith('"threshold" ' + reason), answer
        status, answer = call_json(url + "/v1/classify/mail?threshold=0.3", "POST", b"Subject: hi\n\nyo")
        assert status == 422 and answer["error"].startswith("?threshold= " + reason), answer
        assert call_json(url + "/v1/classify/mail", "POST", b"Subject: hi!\n\nyo")[0] == 200


def test_json_the_parser_cannot_hold_is_refused_as_malformed(service):
    """Nesting past the recursion limit and integers past the digit limit are small bodies that
    Python's json module refuses with other exceptions than JSONDecodeError."""
    for body, reason in (
        (b"[" * 100_000, "nested too deeply"),
        (b'{"text": "a", "threshold": ' + b"1" * 5_000 + b"}", "a number has too many digits"),
    ):
        code, answer = call_json(service + "/v1/classify", "POST", body, {"Content-Type": "application/json"})
        assert (code, answer) == (422, {"error": f"malformed JSON: {reason}"})


def test_a_client_leaving_mid_body_is_its_error_not_the_services(clf):
    """A request cut off before its Content-Length is read whole counts as a 400, with no
    "Exception in ASGI application" traceback, not as a 500 (a bug) in the metrics."""
    with running(create_app(clf)) as url:
        host, port = url.removeprefix("http://").split(":")
        for path in ("/v1/classify", "/v1/classify/mail"):
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n".encode() + b'{"te')
            deadline = time.monotonic() + 10
            counted = f'spamtune_http_requests_total{{code="400",endpoint="{path}"}} 1.0'
            while counted not in (metrics := call(url + "/metrics")[2].decode()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert counted in metrics and 'code="500"' not in metrics


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n",
        # h11 takes this one, as chunked, and kept the connection: a proxy going by the length
        # would have read what follows the chunks as a request of its own.
        b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_a_request_the_http_parser_refuses_gets_the_json_error_shape(service, head):
    """uvicorn's parser refuses these before the app is called; the 400 still has the service's
    one-line JSON error and security headers, counts in the metrics, and the service goes on answering."""
    counted = 'spamtune_http_errors_total{code="400",endpoint="malformed"}'
    before = counter_value(call(service + "/metrics")[2].decode(), counted)
    status_line, fields, body = closing_answer(service, head + b"{}")
    assert status_line == b"HTTP/1.1 400 Bad Request"
    assert fields[b"content-type"] == b"application/json" and int(fields[b"content-length"]) == len(body)
    assert (fields[b"x-content-type-options"], fields[b"referrer-policy"]) == (b"nosniff", b"no-referrer")
    assert json.loads(body) == {"error": "malformed HTTP request"}
    assert call_json(service + "/healthz")[0] == 200
    assert counter_value(call(service + "/metrics")[2].decode(), counted) == before + 1


def counter_value(metrics: str, sample: str) -> float:
    """The value of one sample (``name{labels}``) in Prometheus text; 0 if not there yet."""
    for line in metrics.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def closing_answer(url: str, request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """``(status line, header fields, body)`` of the answer to the raw ``request`` on a connection
    of its own, which the service must close after answering (a socket timeout otherwise)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    return status_line, dict(line.split(b": ", 1) for line in headers.split(b"\r\n")), body


def chunked(pieces: list[bytes], end: bool = True) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + (b"0\r\n\r\n" if end else b"")


def test_a_body_in_thousands_of_tiny_chunks_is_refused_before_it_eats_the_event_loop(service):
    """Each chunk costs the parser an event on the loop every client shares: a 1 MiB body in
    1-byte chunks took 14 s of it. Past 4,096 pieces averaging under 256 bytes the body is
    refused as malformed, with its reason; chunks of a normal size pass however many they are."""
    counted = 'spamtune_http_errors_total{code="400",endpoint="malformed"}'
    not_also = 'spamtune_http_requests_total{code="400",endpoint="/v1/classify"}'  # the app's answer, never sent
    metrics = call(service + "/metrics")[2].decode()
    before, before_app = counter_value(metrics, counted), counter_value(metrics, not_also)
    head = b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    started = time.monotonic()
    status_line, fields, body = closing_answer(service, head + chunked([b" "] * 5000, end=False))
    assert time.monotonic() - started < 2
    assert status_line == b"HTTP/1.1 400 Bad Request" and fields[b"x-content-type-options"] == b"nosniff"
    assert json.loads(body) == {"error": "request body in too many small chunks (over 4,096, averaging under 256 bytes)"}
    time.sleep(0.2)  # the app's side of the request ends once it sees the connection gone
    metrics = call(service + "/metrics")[2].decode()
    assert (counter_value(metrics, counted), counter_value(metrics, not_also)) == (before + 1, before_app)

    # 2.5 MB in 5,000 chunks of 512 bytes (which the network's reads may split in two).
    message = b"Subject: hi\n\n" + b"win a prize now " * 160_000
    pieces = [message[i : i + 512] for i in range(0, len(message), 512)]
    mail = b"POST /v1/classify/mail HTTP/1.1\r\nHost: localhost\r\nContent-Type: message/rfc822\r\n"
    status_line, _, body = closing_answer(
        service, mail + b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(pieces)
    )
    assert status_line == b"HTTP/1.1 200 OK" and "p_spam" in json.loads(body) and len(pieces) > 5000
    few = [b'{"text":', b' "hello"', b"}"]  # tiny chunks, but few of them
    status_line, _, body = closing_answer(service, head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + chunked(few))
    assert status_line == b"HTTP/1.1 200 OK" and json.loads(body)["label"] in ("ham", "spam")


def test_the_tiny_chunk_guard_holds_where_uvicorn_would_pick_another_parser(clf, monkeypatch):
    """uvicorn's own pick of a parser is httptools wherever that is installed, and the guard
    counts h11's events: there a body in thousands of 1-byte chunks was served. The service runs
    on h11 whatever uvicorn would pick, so the body is refused all the same."""
    import uvicorn.protocols.http.auto as auto

    try:  # the parser uvicorn picks where it is installed
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as OtherParser
    except ImportError:

        class OtherParser(asyncio.Protocol):  # a stand-in: any parser but h11
            def __init__(self, *args, **kwargs) -> None:
                pass

    monkeypatch.setattr(auto, "AutoHTTPProtocol", OtherParser)
    head = b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    with running(create_app(clf)) as url:
        status_line, _, body = closing_answer(url, head + chunked([b" "] * 5000, end=False))
    assert status_line == b"HTTP/1.1 400 Bad Request", status_line
    assert json.loads(body)["error"].startswith("request body in too many small chunks")


def test_a_websocket_upgrade_is_a_plain_request_and_logs_nothing(clf, capfd):
    """The service has no WebSocket endpoint: a request asking to upgrade is answered as any
    other request to its path, and the log gets no warning per attempt (uvicorn's "Unsupported
    upgrade request" and "No supported WebSocket library detected", lines anyone could add to
    an operator's log at will)."""
    upgrade = (b"Host: localhost\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
    with running(create_app(clf)) as url:
        capfd.readouterr()
        status_line, _, body = closing_answer(url, b"GET /healthz HTTP/1.1\r\n" + upgrade)
        assert status_line == b"HTTP/1.1 200 OK" and json.loads(body) == {"status": "ok"}
        status_line, _, body = closing_answer(url, b"GET /ws HTTP/1.1\r\n" + upgrade)
        assert status_line == b"HTTP/1.1 404 Not Found" and json.loads(body) == {"error": "not found"}
    err = capfd.readouterr().err
    assert "upgrade" not in err.lower() and "websocket" not in err.lower(), err


def test_a_request_beyond_the_connection_limit_gets_the_json_error_shape(clf):
    """With ``max_connections`` open (idle keep-alive ones count), the next request is answered
    503 at once, in the service's JSON shape, counted in the metrics, and its connection closed;
    once those connections close, the service serves again."""
    import http.client

    limit = 2
    # Idle connections are kept a minute rather than uvicorn's 5 s, so that a stall of this
    # shared machine cannot close the held ones before the refused requests are sent.
    with running(create_app(clf), max_connections=limit, keep_alive_s=60) as url:
        host, port = url.removeprefix("http://").split(":")
        held: list[http.client.HTTPConnection] = []
        try:
            # Kept open idle. The last of these is connection number `limit`: still served.
            for _ in range(limit):
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                held.append(conn)
                conn.request("GET", "/healthz")
                answer = conn.getresponse()
                assert (answer.status, answer.read()) == (200, b'{"status":"ok"}')
            refusals = [closing_answer(url, b"GET /v1/model HTTP/1.1\r\nHost: localhost\r\n\r\n") for _ in range(2)]
        finally:
            for conn in held:
                conn.close()
        (status_line, fields, body), again = refusals
        assert status_line == b"HTTP/1.1 503 Service Unavailable"
        assert fields[b"content-type"] == b"application/json" and int(fields[b"content-length"]) == len(body)
        assert (fields[b"connection"], fields[b"retry-after"]) == (b"close", b"1")
        assert json.loads(body) == {
            "error": "too many connections: the service serves at most 2 at once; retry later"
        }
        del fields[b"date"], again[1][b"date"]
        assert again == refusals[0]  # one refusal answers every time, nothing added per use
        deadline = time.monotonic() + 10
        while (status := call(url + "/healthz")[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the service has seen the held connections close
        assert status == 200
        metrics = call(url + "/metrics")[2].decode()
        assert 'spamtune_http_errors_total{code="503",endpoint="/v1/model"} 2.0' in metrics


def test_a_connection_once_served_is_not_refused_its_next_requests(clf):
    """At the connection limit, requests written at once on one connection (pipelined) are all
    served: the next one's head is read as the previous answer completes, and that answer's
    request counted as still in progress, so the second got a 503. And a connection once served
    keeps being served when a newer one beyond the limit opens: the newer one is refused."""
    healthz = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with running(create_app(clf), max_connections=1, keep_alive_s=60) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as served:
            served.sendall(healthz * 3)
            assert status_lines(served, 3) == [b"HTTP/1.1 200 OK"] * 3
            with socket.create_connection((host, int(port)), timeout=10) as newer:
                time.sleep(0.5)  # the service has taken the newer connection in by then
                served.sendall(healthz)
                assert status_lines(served, 1) == [b"HTTP/1.1 200 OK"]
                newer.sendall(healthz)
                assert status_lines(newer, 1) == [b"HTTP/1.1 503 Service Unavailable"]


def status_lines(sock: socket.socket, count: int) -> list[bytes]:
    """The status lines of the next ``count`` answers on ``sock`` (JSON bodies), fewer if it closes."""
    answers = b""
    while answers.count(b"HTTP/1.1 ") < count or not answers.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answers += chunk
    return re.findall(rb"HTTP/1\.1 [^\r]*", answers)


def test_a_connection_that_sends_no_request_head_in_time_is_closed(clf):
    """A connection that sends nothing, or a request head a byte at a time (after an answer
    too), is closed once the head timeout has passed, so that such connections cannot hold the
    connection limit and lock every client out; a request whose head arrived is answered however
    long the model takes."""

    class Slow:
        def __getattr__(self, name):
            return getattr(clf, name)

        def predictions(self, texts, probabilities):
            time.sleep(1.0)  # twice the head timeout
            return clf.predictions(texts, probabilities)

    # Idle connections after an answer are kept a minute by uvicorn's own timer: only the head
    # timeout can close them here.
    with running(create_app(Slow()), max_connections=2, keep_alive_s=60, head_timeout_s=0.5) as url:
        host, port = url.removeprefix("http://").split(":")
        # Both connections the limit allows: they must not keep it.
        with socket.create_connection((host, int(port)), timeout=5) as silent, \
                socket.create_connection((host, int(port)), timeout=5) as partial:  # fmt: skip
            partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
            assert silent.recv(1) == b"" and partial.recv(1) == b""  # closed by the service, not timed out here
        with socket.create_connection((host, int(port)), timeout=5) as trickling:
            trickling.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\n" + b'{"status":"ok"}'):
                chunk = trickling.recv(65536)
                assert chunk, answer
                answer += chunk
            # The next head, one byte every 0.1 s: each byte would restart uvicorn's idle timer.
            trickling.settimeout(0.1)
            for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 30:
                try:
                    trickling.sendall(bytes([byte]))
                    closed = trickling.recv(1) == b""
                except socket.timeout:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    break
            assert closed
        # The limit is free again, and a request that takes longer than the head timeout is answered.
        assert call_json(url + "/v1/classify", "POST", {"text": "hello"})[0] == 200


def test_a_client_that_reads_nothing_of_its_answers_is_cut_off(clf):
    """Pipelined requests whose answers are never read fill the buffers, and the request then
    waits on the client: with no limit of uvicorn's it held its connection (one of the limit's)
    for as long as it liked. Once writing has waited the head timeout, the connection is aborted:
    what the kernel already holds still arrives, then the end, not the remaining answers."""
    with running(create_app(clf), head_timeout_s=0.5) as url:
        host, port = url.removeprefix("http://").split(":")
        answer = len(call(url + "/static/app.js")[2])
        with socket.socket() as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.settimeout(5)
            reader.connect((host, int(port)))
            # 10 MB of answers, more than the socket buffers hold.
            reader.sendall(b"GET /static/app.js HTTP/1.1\r\nHost: localhost\r\n\r\n" * 1500)
            time.sleep(2)
            received = 0
            try:
                while chunk := reader.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
        assert 0 < received < 1000 * answer
        assert call(url + "/healthz")[0] == 200


def test_request_bodies_held_at_once_are_capped_across_requests(clf):
    """Each request's limit alone let every connection hold a whole body (11.4 MiB of memory for
    each 10 MiB message still arriving): the bodies held at once, from their first byte to their
    answer, have a cap of their own, beyond which a request is 503 before its body is read."""
    settings = ServeSettings(max_mail_bytes=1000, max_body_bytes=1000, max_bodies_bytes=2500)
    mail = b"POST /v1/classify/mail HTTP/1.1\r\nHost: localhost\r\nContent-Type: message/rfc822\r\n"
    with running(create_app(clf, settings)) as url:
        host, port = url.removeprefix("http://").split(":")
        holding = []
        for _ in range(2):  # 2,000 of the 2,500 bytes, bodies still arriving
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(mail + b"Content-Length: 1000\r\n\r\nSubject: hi\n\n")
            holding.append(sock)
        time.sleep(0.3)
        status_line, fields, body = closing_answer(url, mail + b"Content-Length: 600\r\n\r\n" + b"x" * 600)
        assert (status_line, fields.get(b"retry-after")) == (b"HTTP/1.1 503 Service Unavailable", b"1"), (status_line, fields, body)
        assert json.loads(body) == {"error": "the service holds 2,500 bytes of request bodies already; retry later"}
        # A chunked body is counted as it arrives.
        status_line, _, body = closing_answer(
            url, mail + b"Transfer-Encoding: chunked\r\n\r\n" + chunked([b"x" * 300, b"y" * 300])
        )
        assert status_line == b"HTTP/1.1 503 Service Unavailable"
        assert call_json(url + "/v1/classify", "POST", {"text": "hi"})[0] == 200  # 17 bytes: room for it
        for sock in holding:  # the clients leave: their share is given back
            sock.close()
        time.sleep(0.3)
        status, answer = call_json(url + "/v1/classify/mail", "POST", b"Subject: hi\n\n" + b"x" * 900)
        assert status == 200 and "p_spam" in answer


def test_a_body_that_does_not_arrive_in_time_is_refused(clf):
    """A body that stops short of its Content-Length, or comes a byte at a time, is answered
    408 once the body timeout has passed, and its connection closed: it no longer holds a
    connection and a request of the service's limit for as long as the client likes."""
    with running(create_app(clf, ServeSettings(body_timeout_s=0.5))) as url:
        host, port = url.removeprefix("http://").split(":")
        for path in ("/v1/classify", "/v1/classify/mail"):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n".encode())
                s.settimeout(0.1)
                answer, closed = b"", False
                for _ in range(50):  # a byte every 0.1 s, for at most 5 s
                    try:
                        s.sendall(b"x")
                        chunk = s.recv(65536)
                    except socket.timeout:
                        continue
                    except OSError:
                        closed = True
                        break
                    if not chunk:
                        closed = True
                        break
                    answer += chunk
            assert closed, answer
            status_line, _, rest = answer.partition(b"\r\n")
            assert status_line == b"HTTP/1.1 408 Request Timeout", answer
            assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {"error": "the request body did not arrive within 0.5 s"}
        metrics = call(url + "/metrics")[2].decode()
        assert 'spamtune_http_errors_total{code="408",endpoint="/v1/classify/mail"} 1.0' in metrics


def test_predict_with_a_server_classifies_the_start_of_a_line_too_large_for_one_request(strict_service):
    """A line the service cannot take in one request (here 2,000 bytes; by default a line of
    1 MiB, which local predict reads, or 200 KB of NULs, escaped six times over) stopped the
    whole stream with exit 1, every later line unanswered. Its start is classified, with a
    warning, and its output line holds it whole."""
    long_line = "WIN \0" * 1000
    lines = ["lunch?", long_line, "see you"]
    remote = CliRunner().invoke(
        cli_app, ["predict", "--server", strict_service, "--format", "jsonl", "-"], input="".join(line + "\n" for line in lines)
    )
    assert remote.exit_code == 0, remote.stderr
    records = [json.loads(line) for line in remote.stdout.splitlines()]
    assert [r["text"] for r in records] == lines
    sent = records[1]["p_spam"]
    assert "WARNING: message 2 is larger than the service takes in a request: only its first " in remote.stderr
    shown = int(re.search(r"its first ([\d,]+) of 5,000 characters", remote.stderr)[1].replace(",", ""))
    assert 0 < shown < len(long_line) and len(json.dumps(long_line[:shown])) <= 2_000
    status, answer = classify(strict_service, {"texts": [long_line[:shown]]})  # what the service says of that start
    assert status == 200 and sent == round(answer["results"][0]["p_spam"], 6)


def test_oversized_bodies_are_refused_while_reading(strict_service):
    """Without a Content-Length (chunked upload) the limit still holds."""
    def chunks():
        for _ in range(10):
            yield b"x" * 1_000

    import http.client

    host, port = strict_service.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/v1/classify/mail", body=chunks(), encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and "at most 3,000 bytes" in json.loads(response.read())["error"]
    conn.close()
    assert call_json(strict_service + "/v1/classify/mail?threshold=7", "POST", b"Subject: hi\n\nyo") == (
        422, {"error": "invalid threshold: must be between 0 and 1"},
    )  # fmt: skip


def test_a_failing_request_leaves_no_trace_and_the_service_running(strict_service):
    status, headers, payload = call(strict_service + "/v1/classify", "POST", {"texts": ["fine", "explode"]})
    assert status == 500 and json.loads(payload) == {"error": "internal error"}
    assert str(REPO) not in payload.decode() and "Traceback" not in payload.decode()
    assert call_json(strict_service + "/v1/classify", "POST", {"text": "still up!"})[1]["label"] == "spam"
    assert call_json(strict_service + "/nope") == (404, {"error": "not found"})
    assert call_json(strict_service + "/v1/classify")[0] == 405
    metrics = call(strict_service + "/metrics")[2].decode()
    assert re.search(r'spamtune_http_errors_total\{code="500",endpoint="/v1/classify"\} 1\.0', metrics)


# ----------------------------------------------------------------------------- the other endpoints


MAIL = (
    b"From: Prize Desk <win@example.com>\r\nTo: you@example.org\r\nSubject: You have WON\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nClaim your cash reward today, reply YES to 85023\r\n"
)


def test_mail_endpoint_classifies_the_message_text_and_gives_the_filter_header(service, clf):
    status, answer = call_json(service + "/v1/classify/mail", "POST", MAIL, {"Content-Type": "message/rfc822"})
    [expected] = predict_long(clf, [message_text(MAIL)], DEFAULT_LONG)
    assert "85023" in message_text(MAIL) and "WON" in message_text(MAIL)
    assert status == 200 and (answer["label"], answer["p_spam"]) == (expected.label, expected.probability)
    assert answer["damaged"] is False
    flag = "Yes" if expected.label == "spam" else "No"
    assert answer["headers"] == {
        "X-Spamtune-Status": f"{flag}, p_spam={expected.probability:.3f}, threshold=0.5",
        "X-Spamtune-Run": f"random-run; spamtune {__version__}",
    }


def test_mail_endpoint_explains_as_predict_mail_explain_does(service, random_run, clf, tmp_path):
    """``?explain=true`` adds what ``predict --mail --explain --format jsonl`` prints for the
    message: the spans, the window and the text the model read, which their offsets index; the
    verdict and the headers stay those of the plain answer."""
    url = service + "/v1/classify/mail"
    status, plain = call_json(url, "POST", MAIL)
    status_explained, answer = call_json(url + "?explain=true", "POST", MAIL)
    assert status == status_explained == 200 and set(plain) == {"run", "threshold", "label", "p_spam", "damaged", "headers"}
    assert {k: answer.pop(k) for k in ("explanation", "window", "text")} and answer == plain
    box = tmp_path / "box"
    box.mkdir()
    (box / "1.eml").write_bytes(MAIL)
    local = CliRunner().invoke(
        cli_app, ["predict", "--run", str(random_run), "--precision", "fp32", "--mail", str(box), "--explain", "--format", "jsonl"]
    )
    assert local.exit_code == 0, local.stderr
    (expected,) = [json.loads(line) for line in local.stdout.splitlines()]
    _, answer = call_json(url + "?explain=true", "POST", MAIL)
    assert (answer["label"], round(answer["p_spam"], 6)) == (expected["label"], expected["p_spam"])
    assert (answer["explanation"], answer["window"], answer["text"]) == (expected["explanation"], expected["window"], expected["text"])
    assert answer["text"] == message_text(MAIL) and answer["explanation"]
    assert all(answer["text"][s["start"] : s["end"]] == s["text"] for s in answer["explanation"])
    assert call_json(url + "?explain=false", "POST", MAIL) == (200, plain)


def same_but_last_digits(one: str, other: str) -> bool:
    """Whether two outputs are the same text with the same numbers, to their last printed digit:
    local predict --mail classifies a round of messages in shared batches, the service each
    message in its own, and other padding moves a float by ~1e-7, enough to flip a rounding."""
    number = re.compile(r"-?\d+\.\d+")
    if number.sub("#", one) != number.sub("#", other):
        return False
    pairs = zip(number.findall(one), number.findall(other))
    return all(abs(float(a) - float(b)) <= 1.5 * 10 ** -len(a.split(".")[1]) for a, b in pairs)


def test_predict_mail_with_a_server_prints_what_it_prints_locally(service, random_run, tmp_path, monkeypatch):
    """``predict --mail DIR --server URL`` sends each message to /v1/classify/mail and prints, in
    every format and with --explain, what local ``predict --mail`` prints: ids, labels, damage,
    explanations of the text the model read, and an unreadable file's error line and status."""
    from helpers import deny_reading

    box = tmp_path / "box"
    box.mkdir()
    (box / "1.eml").write_bytes(MAIL)
    (box / "2.eml").write_bytes(b"Subject: lunch\nContent-Type: text/html\n\n<style>.x{display:none}</style>"
                                b"<p>Lunch tomorrow?<span class=x>WIN a free prize</span></p>\n")  # fmt: skip
    (box / "3.eml").write_bytes(b"Subject: =?utf-8?b?not base64?=\nContent-Transfer-Encoding: base64\n\n!!!\n")
    (box / "4.eml").write_bytes(MAIL)
    deny_reading(monkeypatch, box / "4.eml")
    from spamtune.cli import remote

    monkeypatch.setattr(remote, "MAIL_REQUESTS_IN_FLIGHT", 2)  # fewer than the messages: answers still in order
    printed = {}
    for fmt in (["--format", "tsv", "--header"], ["--format", "jsonl"], ["--format", "text"]):
        for explain in ([], ["--explain"]):
            args = ["--mail", str(box), *fmt, *explain]
            local = CliRunner().invoke(cli_app, ["predict", "--run", str(random_run), "--precision", "fp32", *args])
            remote = CliRunner().invoke(cli_app, ["predict", "--server", service, *args])
            assert local.exit_code == remote.exit_code == 1, (local.stderr, remote.stderr)  # the unreadable file
            assert same_but_last_digits(remote.stdout, local.stdout) and remote.stderr == local.stderr
            printed[(fmt[1], bool(explain))] = remote
    records = [json.loads(line) for line in printed[("jsonl", True)].stdout.splitlines()]
    assert [r["id"] for r in records] == ["1.eml", "2.eml", "3.eml", "4.eml"] and records[3]["label"] == "error"
    assert [r["damaged"] for r in records] == [False, False, True, True] and "WIN" not in records[1]["text"]
    assert printed[("jsonl", True)].stderr.splitlines()[-1] == f"Error: 1 message file(s) in {box} could not be read; their lines say error"
    refused = CliRunner().invoke(cli_app, ["predict", "--server", service, "--mail", str(box), "--long", "head"])
    assert refused.exit_code == 2 and "--long cannot be used with --server" in refused.stderr


def test_a_long_message_is_explained_in_the_chunk_that_decided(service, clf):
    """Mail is read in chunks (filter's mode): the answer's window is the chunk whose verdict it
    gives, and the threshold of the request applies as without explain."""
    raw = "Subject: news\n\nПривет 🎉 ".encode() + b" see you at lunch" * 60 + b" WIN a prize now!\n"
    text = message_text(raw)
    (verdict,), (explained,) = clf.predict_explained([text], DEFAULT_LONG)
    status, answer = call_json(service + "/v1/classify/mail?explain=true&threshold=0.25", "POST", raw)
    assert status == 200 and answer["text"] == text and answer["threshold"] == 0.25
    assert answer["p_spam"] == verdict.probability and answer["label"] == ("spam" if verdict.probability >= 0.25 else "ham")
    assert answer["window"] == explained.window_list() and answer["explanation"] == json.loads(json.dumps(explained.top(3)))
    assert len(answer["window"]) == 1 and answer["window"][0]["token_end"] - answer["window"][0]["token_start"] == clf.max_length
    assert all(answer["window"][0]["start"] <= s["start"] < s["end"] <= answer["window"][0]["end"] for s in answer["explanation"])


def test_a_message_with_no_text_keeps_its_answer_with_explain(service):
    """An empty body or one with nothing readable is classified as the empty text it reads as:
    its answer has every field, an empty explanation and the end-of-text token's window."""
    for raw in (b"", b"\x00\x01\xff\xfe", b"Content-Type: image/png\n\n\x89PNG"):
        status, answer = call_json(service + "/v1/classify/mail?explain=true", "POST", raw)
        assert status == 200, answer
        assert answer["text"] == message_text(raw) and answer["label"] in ("spam", "ham") and "headers" in answer
        if answer["text"] == "":
            assert answer["explanation"] == [] and answer["window"] == [{"start": 0, "end": 0, "token_start": 0, "token_end": 1}]


def test_mail_explain_refusals_are_one_line(service, clf):
    """A value that is no boolean, ``?explain=`` given twice, and a message over the mail limit:
    one-line JSON errors, as for the threshold."""
    url = service + "/v1/classify/mail"
    for query, status, reason in (
        ("?explain=maybe", 422, "invalid explain: "),
        ("?explain=true&explain=false", 422, "query parameter 'explain' given 2 times; give it once"),
        ("?explain=true&threshold=2", 422, "invalid threshold: must be between 0 and 1"),
    ):
        code, answer = call_json(url + query, "POST", MAIL)
        assert code == status and set(answer) == {"error"} and answer["error"].startswith(reason), answer
        assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
    with running(create_app(clf, ServeSettings(max_mail_bytes=100))) as small:
        code, answer = call_json(small + "/v1/classify/mail?explain=true", "POST", MAIL + b"x" * 100)
        assert (code, answer) == (413, {"error": "request body too large (at most 100 bytes)"})


def test_mail_explanations_share_passes_within_the_explain_limit(clf):
    """Explaining a message costs dozens of forward passes, as a text does: concurrent mail
    requests with explain are batched together at most ``max_explain_texts`` a pass, apart from
    plain ones."""
    sizes = []

    class Recording:
        def __getattr__(self, name):
            return getattr(clf, name)

        def predict_explained(self, texts, long=None):
            sizes.append(len(texts))
            time.sleep(0.05)  # long enough for the other requests to queue up
            return clf.predict_explained(texts, long)

    messages = [MAIL.replace(b"85023", str(i).encode()) for i in range(7)]
    with running(create_app(Recording(), ServeSettings(max_explain_texts=2))) as url:
        with ThreadPoolExecutor(7) as pool:
            answers = list(pool.map(lambda raw: call_json(url + "/v1/classify/mail?explain=true", "POST", raw), messages))
    assert [status for status, _ in answers] == [200] * 7
    assert [answer["text"] for _, answer in answers] == [message_text(raw) for raw in messages]
    assert sum(sizes) == 7 and max(sizes) == 2


def test_filter_with_a_server_writes_what_filter_writes(service, random_run):
    local = CliRunner().invoke(cli_app, ["filter", "--run", str(random_run), "--precision", "fp32"], input=MAIL)
    remote = CliRunner().invoke(cli_app, ["filter", "--server", service], input=MAIL)
    assert local.exit_code == 0 and remote.exit_code == 0, remote.stderr
    assert b"X-Spamtune-Status: " in remote.stdout_bytes and remote.stdout_bytes == local.stdout_bytes
    # The service unreachable: the message goes through untouched, one line on stderr, status 1.
    down = CliRunner().invoke(cli_app, ["filter", "--server", "http://127.0.0.1:9"], input=MAIL)
    assert down.exit_code == 1 and down.stdout_bytes == MAIL
    assert down.stderr.startswith("Error: message passed through unclassified: cannot reach the service")
    refused = CliRunner().invoke(cli_app, ["filter", "--server", service, "--long", "head"], input=MAIL)
    assert refused.exit_code == 2 and "--long cannot be used with --server" in refused.stderr


def test_health_model_metrics_and_openapi(service):
    assert call_json(service + "/healthz") == (200, {"status": "ok"})
    status, info = call_json(service + "/v1/model")
    assert status == 200 and info["run"] == "random-run" and info["labels"] == ["ham", "spam"]
    assert info["positive_label"] == "spam" and info["threshold"] == 0.5 and info["max_length"] == 64
    assert info["shape"] == {"n_layers": 2, "n_heads": 4, "emb_dim": 32, "context_length": 64}
    assert "/" not in json.dumps(info)  # no file path reaches a client
    metrics = call(service + "/metrics")[2].decode()
    for name in ("spamtune_http_requests_total", "spamtune_http_request_duration_seconds_bucket",
                 "spamtune_batch_size_messages_bucket", "spamtune_batch_size_requests_bucket",
                 "spamtune_messages_classified_total"):  # fmt: skip
        assert name in metrics
    assert re.search(r'spamtune_http_requests_total\{code="200",endpoint="/healthz"\} [1-9]', metrics)
    spec = call_json(service + "/openapi.json")[1]
    assert {"/v1/classify", "/v1/classify/mail", "/v1/model", "/healthz", "/metrics"} <= set(spec["paths"])
    page = call(service + "/")
    assert page[0] == 200 and "script-src 'self'" in page[1]["content-security-policy"]
    assert b"<textarea" in page[2] and not re.search(rb"""(src|href)=["']?(https?:)?//""", page[2])  # no CDN


def test_head_answers_as_get_without_the_body(service):
    """Monitors and load balancers often check a service with HEAD: every page a GET answers
    answers HEAD with the same status and headers and no body; the API's POST routes still refuse it."""
    for path in ("/healthz", "/", "/static/app.js", "/v1/model", "/metrics", "/openapi.json"):
        get_status, get_headers, _ = call(service + path)
        status, headers, body = call(service + path, "HEAD")
        assert (status, body) == (get_status, b"") and get_status == 200, path
        for name in ("content-type", "x-content-type-options", "referrer-policy", "content-security-policy"):
            assert headers.get(name) == get_headers.get(name), (path, name)
    status, headers, _ = call(service + "/v1/classify", "HEAD")
    assert (status, headers["allow"]) == (405, "POST")



# ----------------------------------------------------------------------------- safety switches


def test_api_key_guards_everything_but_health_and_the_page(clf):
    with running(create_app(clf, ServeSettings(api_key=KEY))) as url:
        body = {"text": "hello"}
        assert classify(url, body)[0] == 401
        assert classify(url, body, {"Authorization": "Bearer wrong"})[0] == 401
        assert classify(url, body, {"Authorization": KEY})[0] == 401  # the scheme is part of it
        status, headers, payload = call(url + "/v1/classify", "POST", body)
        assert headers["www-authenticate"] == "Bearer" and "API key" in json.loads(payload)["error"]
        assert classify(url, body, {"Authorization": f"Bearer {KEY}"})[0] == 200
        assert call(url + "/metrics")[0] == 401 and call(url + "/v1/model")[0] == 401
        assert call(url + "/healthz")[0] == 200 and call(url + "/")[0] == 200


def test_cors_is_off_unless_asked_for(clf):
    origin = {"Origin": "https://mail.example.org"}
    with running(create_app(clf)) as url:
        status, headers, _ = call(url + "/v1/model", headers=origin)
        assert status == 403 and "access-control-allow-origin" not in headers
    with running(create_app(clf, ServeSettings(cors_origins=("https://mail.example.org",)))) as url:
        status, headers, _ = call(url + "/v1/model", headers=origin)
        assert (status, headers["access-control-allow-origin"]) == (200, "https://mail.example.org")
        assert classify(url, {"text": "hi"}, {**origin, "Content-Type": "text/plain"})[0] == 200
        status, other, _ = call(url + "/v1/model", headers={"Origin": "https://evil.example"})
        assert status == 403 and "access-control-allow-origin" not in other


@pytest.mark.parametrize("api_key", [None, KEY])
def test_every_cors_preflight_is_counted_and_refused_in_the_services_shape(clf, api_key):
    """Preflights are answered by the CORS layer, not by a route: allowed or refused, for a known
    path or not, each is counted in /metrics like any answer. Browsers send no credentials on a
    preflight, so with an API key it is answered without one (it runs nothing)."""
    allowed = "https://mail.example.org"
    settings = ServeSettings(cors_origins=(allowed,), api_key=api_key)
    auth = {"Authorization": f"Bearer {KEY}"} if api_key else {}
    with running(create_app(clf, settings)) as url:
        def preflight(path: str, origin: str, method: str = "POST") -> tuple[int, dict, bytes]:
            return call(url + path, "OPTIONS", headers={"Origin": origin, "Access-Control-Request-Method": method})

        status, headers, _ = preflight("/v1/classify", allowed)
        assert (status, headers["access-control-allow-origin"]) == (200, allowed)
        assert headers["x-content-type-options"] == "nosniff"
        assert preflight("/no/such/path", allowed)[0] == 200
        assert refused(url + "/v1/classify", "OPTIONS", headers={
            "Origin": allowed, "Access-Control-Request-Method": "DELETE",
        }) == (400, "CORS preflight refused: method not allowed")  # fmt: skip
        evil = refused(url + "/v1/model", "OPTIONS", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET",
        })  # fmt: skip
        # Keyless, another site's origin is refused before CORS sees it, as for any request.
        assert evil == ((400, "CORS preflight refused: origin not allowed") if api_key else (403, CROSS_SITE))
        metrics = call(url + "/metrics", headers=auth)[2].decode()
    sample = 'spamtune_http_requests_total{{code="{}",endpoint="{}"}}'
    assert counter_value(metrics, sample.format(200, "/v1/classify")) == 1
    assert counter_value(metrics, sample.format(200, "other")) == 1
    assert counter_value(metrics, sample.format(400, "/v1/classify")) == 1
    assert counter_value(metrics, sample.format(evil[0], "/v1/model")) == 1
    assert counter_value(metrics, 'spamtune_http_errors_total{code="400",endpoint="/v1/classify"}') == 1
    assert counter_value(metrics, 'spamtune_http_request_duration_seconds_count{endpoint="/v1/classify"}') == 2


def refused(url: str, method: str = "GET", body=None, headers: dict | None = None) -> tuple[int, str]:
    """``(status, error line)`` of a request the service should refuse, after checking that the
    refusal has the service's shape: one JSON line and the security headers."""
    status, fields, payload = call(url, method, body, headers)
    fields = {name.lower(): value for name, value in fields.items()}
    assert fields["content-type"] == "application/json" and set(json.loads(payload)) == {"error"}
    assert (fields["x-content-type-options"], fields["referrer-policy"]) == ("nosniff", "no-referrer")
    return status, json.loads(payload)["error"]


def test_a_keyless_service_refuses_other_sites_pages(service):
    """A page elsewhere can make a browser on this machine POST text/plain to the service with
    no CORS preflight; the browser names the page's site in Origin, and the service refuses it
    before reading the body. curl, scripts (no Origin) and the service's own page still pass."""
    metrics = lambda: call(service + "/metrics")[2].decode()  # noqa: E731
    classified = counter_value(metrics(), "spamtune_messages_classified_total")
    counted = 'spamtune_http_errors_total{code="403",endpoint="/v1/classify"}'
    before = counter_value(metrics(), counted)
    port = service.rsplit(":", 1)[1]
    plain = {"Content-Type": "text/plain"}
    for origin in ("https://evil.example", "null", f"http://localhost:{port}", f"https://127.0.0.1:{port}",
                   "http://127.0.0.1:1", f"http://127.0.0.1:{port}/page"):  # fmt: skip
        assert refused(service + "/v1/classify", "POST", {"text": "x"}, {**plain, "Origin": origin}) == (403, CROSS_SITE)
    mail = {"Content-Type": "message/rfc822", "Origin": "https://evil.example"}
    assert refused(service + "/v1/classify/mail", "POST", b"Subject: hi\n\nyo", mail) == (403, CROSS_SITE)
    assert refused(service + "/v1/model", headers={"Origin": "https://evil.example"}) == (403, CROSS_SITE)
    assert counter_value(metrics(), counted) == before + 6
    assert counter_value(metrics(), "spamtune_messages_classified_total") == classified  # no work done

    assert classify(service, {"text": "x"}, plain)[0] == 200  # curl -d: no Origin
    # The service's own page, however the address in the browser's bar was written.
    for host, own in ((f"127.0.0.1:{port}", service), (f"localhost:{port}", f"http://LocalHost:{port}"),
                      ("localhost", "http://localhost:80"), (f"[::1]:{port}", f"http://[::1]:{port}")):  # fmt: skip
        assert classify(service, {"text": "x"}, {"Content-Type": "application/json", "Host": host, "Origin": own})[0] == 200


@pytest.mark.parametrize("path", ["/healthz", "/v1/model", "/metrics", "/", "/v1/classify", "/nowhere"])
def test_a_keyless_service_answers_only_requests_addressed_to_localhost(service, path):
    """A page whose host name is made to resolve to 127.0.0.1 (DNS rebinding) is the service's
    own origin for the browser, but its requests name that host in Host: refused everywhere,
    /healthz included (a monitor of a loopback service is on this machine and says localhost)."""
    from spamtune.serve.app import NOT_LOCALHOST

    port = service.rsplit(":", 1)[1]
    method, body = ("POST", {"text": "x"}) if path == "/v1/classify" else ("GET", None)
    counted = f'spamtune_http_errors_total{{code="403",endpoint="{path if path != "/nowhere" else "other"}"}}'
    before = counter_value(call(service + "/metrics")[2].decode(), counted)
    for host in (f"rebound.example:{port}", "rebound.example", "localhost.rebound.example", f"192.168.1.5:{port}",
                 "localhost.localdomain", "[::ffff:127.0.0.1]", f"localhost:{port}x", "127.0.0.1.", "[::1"):  # fmt: skip
        assert refused(service + path, method, body, {"Host": host}) == (403, NOT_LOCALHOST), host
    for host in ("localhost", f"LocalHost:{port}", "127.0.0.1", f"127.1.2.3:{port}", "[::1]", f"[::1]:{port}"):
        assert call(service + path, method, body, {"Host": host})[0] == (404 if path == "/nowhere" else 200), host
    assert counter_value(call(service + "/metrics")[2].decode(), counted) == before + 9


def test_a_request_without_host_is_served_by_a_keyless_service(service):
    """HTTP/1.0 needs no Host header, and no browser sends a request without one."""
    status_line, _, body = closing_answer(service, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status_line == b"HTTP/1.1 200 OK" and json.loads(body) == {"status": "ok"}
    status_line, _, body = closing_answer(service, b"GET /v1/model HTTP/1.0\r\nOrigin: https://evil.example\r\n\r\n")
    assert status_line == b"HTTP/1.1 403 Forbidden" and "no other site" in json.loads(body)["error"]


def test_a_service_with_a_key_checks_neither_host_nor_origin(clf):
    """The key guards it: a reverse proxy may keep the client's Host and its page's Origin, and
    another site's page cannot send the key (a request without it is a 401, before any work)."""
    with running(create_app(clf, ServeSettings(api_key=KEY))) as url:
        auth = {"Authorization": f"Bearer {KEY}"}
        proxied = {**auth, "Host": "spam.example.org", "Origin": "https://spam.example.org"}
        assert classify(url, {"text": "x"}, proxied)[0] == 200
        assert call(url + "/healthz", headers={"Host": "spam.example.org"})[0] == 200
        cross_site = {"Content-Type": "text/plain", "Origin": "https://evil.example"}
        assert refused(url + "/v1/classify", "POST", {"text": "x"}, cross_site)[0] == 401


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--host", "0.0.0.0"], {}, "give an API key"),
        (["--host", "192.168.1.5"], {"SPAMTUNE_API_KEY": ""}, "give an API key"),
        (["--host", "0.0.0.0", "--api-key", "short"], {}, "too short"),
        # No client could send it: a header carries printable ASCII only.
        (["--host", "0.0.0.0"], {"SPAMTUNE_API_KEY": "ключ-ключ-ключ-ключ"}, "printable ASCII"),
    ],
)
def test_serve_refuses_other_hosts_without_a_key(args, env, message, monkeypatch):
    monkeypatch.delenv("SPAMTUNE_API_KEY", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", *args], env=env)
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_loopback_detection():
    from spamtune.serve.server import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.org", ""]))


def test_a_loopback_name_that_resolves_elsewhere_needs_a_key(monkeypatch):
    """``localhost.localdomain`` (and any of the names taken for loopback) is what the resolver
    says it is: where /etc/hosts or DNS maps it to another address, the keyless service listened
    there, reachable from other machines. The addresses it binds are checked, not its name."""
    import spamtune.serve.server as server

    def load(*args, **kwargs):
        raise AssertionError("the run was loaded")

    resolve = socket.getaddrinfo
    monkeypatch.setattr(SpamClassifier, "load", load)
    monkeypatch.setattr(server.socket, "getaddrinfo", lambda host, port, *a, **k: resolve("0.0.0.0", port, *a, **k))
    monkeypatch.delenv("SPAMTUNE_API_KEY", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", "--host", "localhost.localdomain", "--port", "0"])
    assert result.exit_code == 2 and result.stderr.startswith(
        "Error: --host localhost.localdomain resolves to 0.0.0.0, which makes the service reachable from other machines"
    ) and result.stderr.count("\n") == 1


def test_cors_values_are_taken_in_the_form_browsers_send():
    """Browsers send an origin in lower case without its default port, and it is compared with
    --cors's values string for string: HTTPS://App.Example passed the check and never matched."""
    from spamtune.serve.app import browser_form

    assert browser_form("HTTPS://App.Example") == "https://app.example"
    assert browser_form("https://app.example:443") == "https://app.example"
    assert browser_form("http://[::1]:80") == "http://[::1]"
    assert browser_form("http://app.example:8080") == "http://app.example:8080"
    assert browser_form("https://app.example:80") == "https://app.example:80"


@pytest.mark.parametrize("origin", ["https://app.example/", "null", "app.example", "https://app.example/path", "ftp://app.example"])
def test_cors_takes_origins_only(origin, monkeypatch):
    """An Origin header is compared with each --cors whole: "https://app.example/" never matched
    (the page meant was refused), and "null" let any sandboxed page of any site read answers."""
    def load(*args, **kwargs):
        raise AssertionError("the run was loaded")

    monkeypatch.setattr(SpamClassifier, "load", load)
    result = CliRunner().invoke(cli_app, ["serve", "--port", "0", "--cors", "https://ok.example:8443", "--cors", origin])
    assert result.exit_code == 2 and result.stderr == (
        f"Error: --cors {origin!r} is not an origin: give it as a browser sends it, scheme://host[:port] with no path "
        "(e.g. https://app.example)\n"
    )


def test_a_taken_port_or_a_wrong_host_fails_before_the_run_loads(random_run, monkeypatch):
    """The port is taken before the run loads (seconds for gpt2-small, minutes for a large one):
    a taken port, an address this machine does not have or a host that does not resolve is one
    line and exit 1 at once, and the run is never read."""
    def load(*args, **kwargs):
        raise AssertionError("the run was loaded")

    monkeypatch.setattr(SpamClassifier, "load", load)
    monkeypatch.delenv("SPAMTUNE_API_KEY", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", "--run", str(random_run), "--port", str(port)])
    assert result.exit_code == 1 and result.stderr == (
        f"Error: could not listen on 127.0.0.1:{port}: the port is taken (another process listens on it; "
        "--port 0 takes a free one)\n"
    )
    # 192.0.2.1 (TEST-NET-1, documentation only) is on no interface: binding it sends nothing.
    result = CliRunner().invoke(cli_app, ["serve", "--run", str(random_run), "--host", "192.0.2.1"], env={"SPAMTUNE_API_KEY": KEY})
    assert result.exit_code == 1 and result.stderr == "Error: could not listen on 192.0.2.1:8080: this machine has no such address\n"

    def no_such_name(*args, **kwargs):  # as the resolver answers a name it does not know, without asking one
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    result = CliRunner().invoke(cli_app, ["serve", "--host", "no-such-host.example", "--port", "0"], env={"SPAMTUNE_API_KEY": KEY})
    assert result.exit_code == 1 and result.stderr == (
        "Error: could not listen on no-such-host.example:0: the host name does not resolve (Name or service not known)\n"
    )


def test_the_port_stays_taken_during_the_load_and_closed_until_ready(random_run, monkeypatch):
    """While the run loads no other server can bind the port, even one that allows sharing it
    (SO_REUSEADDR, as most do), and a client is refused at once rather than left waiting; the
    socket bound then is the one served."""
    port, seen = _free_port(), {}
    real_load = SpamClassifier.load

    def load(*args, **kwargs):
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        seen["loaded"] = True
        return real_load(*args, **kwargs)

    def serve_app(app, sockets, on_ready, access_log=False):
        seen["served"] = [sock.getsockname()[:2] for sock in sockets]
        return True  # as a service that was stopped

    monkeypatch.setattr(SpamClassifier, "load", load)
    monkeypatch.setattr("spamtune.serve.server.serve_app", serve_app)
    result = CliRunner().invoke(cli_app, ["serve", "--run", str(random_run), "--port", str(port)])
    assert result.exit_code == 0, result.stderr
    assert seen == {"loaded": True, "served": [("127.0.0.1", port)]}


def test_the_served_run_is_named_with_control_characters_escaped_on_one_line(tmp_path, monkeypatch):
    """The line naming the served classifier printed its run folder as it was: an escape
    sequence in the name drove the terminal, and a line break cut the line in two."""
    run_dir = write_rigged_run(tmp_path / "run\x1b]0;x\x07\nx")
    monkeypatch.setattr("spamtune.serve.server.serve_app", lambda app, sockets, on_ready, access_log=False: True)
    result = CliRunner().invoke(cli_app, ["serve", "--run", str(run_dir), "--port", "0"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith(f"spamtune serve: SpamClassifier({tmp_path}/run\\x1b]0;x\\x07\\nx, labels=")
    assert len(result.stderr.splitlines()) == 1 and "\x1b" not in result.stderr


# ----------------------------------------------------------------------------- a real process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path):
    run_dir = write_rigged_run(tmp_path / "rigged")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spamtune", "serve", "--run", str(run_dir), "--port", str(port), "--max-explain-texts", "3"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        ready = proc.stderr.readline() + proc.stderr.readline()
        assert f"ready on http://127.0.0.1:{port}" in ready
        status, info = call_json(f"http://127.0.0.1:{port}/v1/model")
        assert status == 200 and info["limits"]["max_explain_texts"] == 3
        # A request whose body is half sent when SIGTERM arrives: it must still be answered.
        body = json.dumps({"texts": ["in flight!", "still here"]}).encode()
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])  # fmt: skip
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        conn.sendall(body[10:])
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
        conn.close()
        head, _, payload = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert [r["label"] for r in json.loads(payload)["results"]] == ["spam", "ham"]
        assert proc.wait(20) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_ctrl_c_stops_at_once_with_one_line(tmp_path):
    """Ctrl-C waits for the requests in flight (here an upload stalled mid-body); a second one
    stops without them: the client gets the 503, the log one line rather than a traceback, and
    the exit status is Ctrl-C's 130, since requests were cut off."""
    run_dir = write_rigged_run(tmp_path / "rigged")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spamtune", "serve", "--run", str(run_dir), "--port", "0"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        proc.stderr.readline()
        port = int(re.search(r"ready on http://127\.0\.0\.1:(\d+)", proc.stderr.readline())[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
            time.sleep(0.3)  # the request is in the app, waiting for its body
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            assert proc.poll() is None  # waiting for the request in flight
            proc.send_signal(signal.SIGINT)
            answer = b""
            while chunk := stalled.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert proc.wait(20) == 130
        assert proc.stderr.read() == "Error: interrupted again: stopped without waiting for the requests in flight\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_request_cut_off_by_the_end_of_shutdown_gets_the_services_503(clf, capfd):
    """A request still running when the graceful shutdown's time is up (here a body that never
    ends) is cancelled by uvicorn: it gets the service's JSON 503 and security headers, not
    uvicorn's plain-text 500, and the log no 'Exception in ASGI application' traceback."""
    with running(create_app(clf), graceful_shutdown_s=0.3) as url:
        host, port = url.removeprefix("http://").split(":")
        stalled = socket.create_connection((host, int(port)), timeout=10)
        stalled.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)  # the request is in the app, waiting for its body
    with stalled:  # the block's end stopped the service
        answer = b""
        while chunk := stalled.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    head, _, body = rest.partition(b"\r\n\r\n")
    assert status_line == b"HTTP/1.1 503 Service Unavailable", answer
    assert b"x-content-type-options: nosniff" in head and json.loads(body) == {"error": "the service is shutting down"}
    assert "Exception in ASGI application" not in capfd.readouterr().err


def test_serve_listens_on_an_ipv6_address_written_in_brackets(tmp_path):
    """``--host [::1]``, as the address is written in a URL: accepted as loopback, and served
    there, rather than failing to bind after the run was loaded."""
    run_dir = write_rigged_run(tmp_path / "rigged")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spamtune", "serve", "--run", str(run_dir), "--host", "[::1]", "--port", str(port)],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        ready = proc.stderr.readline() + proc.stderr.readline()
        assert f"ready on http://[::1]:{port}" in ready, ready + proc.stderr.read() if proc.poll() is not None else ready
        assert call_json(f"http://[::1]:{port}/healthz") == (200, {"status": "ok"})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_client_mode_never_imports_torch(service, tmp_path):
    """`spamtune predict --server` in a fresh interpreter: answers printed (explained too), torch never
    imported, and for predict not the email package either (a client's cold start is mostly imports)."""
    probe = (
        "import sys\n"
        "from spamtune.cli import app\n"
        "code = app(sys.argv[1:], prog_name='spamtune', standalone_mode=False)\n"
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n"
        "print('MAIL_LOADED' if 'spamtune.mail' in sys.modules else 'NO_MAIL', file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", probe, "predict", "--server", service, "--format", "label", "Claim now", "lunch?"]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2 and set(proc.stdout.split()) <= {"spam", "ham"}
    assert "NO_TORCH" in proc.stderr and "NO_MAIL" in proc.stderr
    explained = subprocess.run(args[:-4] + ["--explain", "--format", "jsonl", "Claim now"], capture_output=True, text=True, env=env, timeout=60)
    assert explained.returncode == 0 and "NO_TORCH" in explained.stderr, explained.stderr
    assert "explanation" in json.loads(explained.stdout)
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "1.eml").write_bytes(MAIL)
    mailed = subprocess.run(args[:-4] + ["--mail", str(tmp_path / "box"), "--format", "text"], capture_output=True, text=True, env=env, timeout=60)
    assert mailed.returncode == 0 and "NO_TORCH" in mailed.stderr and mailed.stdout.split()[0] in ("spam", "ham"), mailed.stderr
    proc = subprocess.run([sys.executable, "-c", probe, "filter", "--server", service], input=MAIL,
                          capture_output=True, env=env, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert b"X-Spamtune-Status: " in proc.stdout and b"NO_TORCH" in proc.stderr


@contextlib.contextmanager
def answering(answers: dict[str, dict]):
    """A stub on 127.0.0.1 that answers every request for a path with ``answers[path]`` (``{}``
    for other paths), status 200; yields its base URL."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Stub(BaseHTTPRequestHandler):
        def answer(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps(answers.get(self.path, {})).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Stub) as stub:
        threading.Thread(target=stub.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{stub.server_address[1]}"
        finally:
            stub.shutdown()


@pytest.mark.parametrize(
    "answers",
    [
        {"/v1/model": {"status": "ok"}},  # another JSON service at that URL
        {"/v1/model": {"labels": ["ham", "spam"], "positive_label": "spam"}, "/v1/classify": {"results": [{}]}},
        # a label with an escape sequence went to the terminal as it came
        {"/v1/model": {"labels": ["ham", "spam\x1b]0;pwned\x07"], "positive_label": "ham"}, "/v1/classify": {"results": [{"label": "ham", "p_spam": 0.1}]}},
        {"/v1/model": {"labels": ["ham", "spam"], "positive_label": "spam"}, "/v1/classify": {"results": [{"label": "\x1b[2J", "p_spam": 0.5}]}},
        {"/v1/model": {"labels": ["ham", "spam"], "positive_label": "spam"}, "/v1/classify": {"results": [{"label": ["spam"], "p_spam": 0.5}]}},
        # predict --mail prints a mail verdict's label too
        {"/v1/model": {"labels": ["ham", "spam"], "positive_label": "spam"}, "/v1/classify": {"results": [{"label": "[2J", "p_spam": 0.5}]},
         "/v1/classify/mail": {"label": "\x1b[2J", "p_spam": 0.5, "threshold": 0.5, "run": "r", "headers": {}}},
        # limits that are no positive counts: the client sized its requests by them and failed with
        # 'unexpected AttributeError' (or ValueError, TypeError)
        {"/v1/model": {"labels": ["ham", "spam"], "positive_label": "spam", "limits": [1]}},
        {"/v1/model": {"labels": ["ham", "spam"], "positive_label": "spam", "limits": {"max_texts": "abc"}}},
        {"/v1/model": {"labels": ["ham", "spam"], "positive_label": "spam", "limits": {"max_texts": None}}},
        # a p_spam that is no probability went into the output, and into the mail's header, as it came
        *({"/v1/model": {"labels": ["ham", "spam"], "positive_label": "spam"},
           "/v1/classify": {"results": [{"label": "ham", "p_spam": p_spam}]},
           "/v1/classify/mail": {"label": "ham", "p_spam": p_spam, "threshold": 0.5, "run": "r", "headers": {}}}
          for p_spam in (float("nan"), -3, 1.5, "0.5", True, 10**400)),
        {"/v1/model": {"labels": ["ham", "spam"], "positive_label": "spam"},  # the filter's header said threshold=inf
         "/v1/classify/mail": {"label": "ham", "p_spam": 0.5, "threshold": float("inf"), "run": "r", "headers": {}}},
    ],
)
def test_a_malformed_answer_is_one_line(answers):
    """Whatever JSON object the URL answers with, the client says so in one line."""
    with answering(answers) as url:
        result = CliRunner().invoke(cli_app, ["predict", "--server", url, "hi"])
        assert result.exit_code == 1 and result.stderr.startswith(f"Error: the service at {url} sent a malformed answer")
        assert result.stderr.count("\n") == 1
        result = CliRunner().invoke(cli_app, ["filter", "--server", url], input=MAIL)
        assert result.exit_code == 1 and result.stdout_bytes == MAIL and "malformed answer" in result.stderr


@pytest.mark.parametrize(
    "result",
    [
        {"label": "spam", "p_spam": 0.9},  # no explanation
        {"label": "spam", "p_spam": 0.9, "explanation": [{"text": "hi", "start": 0, "end": 2, "score": 1.0}]},  # no window
        # offsets that are not the text's: highlighting would cut the line elsewhere
        {"label": "spam", "p_spam": 0.9, "explanation": [{"text": "yo", "start": 0, "end": 2, "score": 1.0}], "window": []},
        {"label": "spam", "p_spam": 0.9, "explanation": [{"text": "", "start": 5, "end": 9, "score": 1.0}], "window": []},
        {"label": "spam", "p_spam": 0.9, "explanation": [{"text": "h", "start": 0, "end": 1, "score": 1.0},
                                                         {"text": "hi", "start": 0, "end": 2, "score": 1.0}], "window": []},
        {"label": "spam", "p_spam": 0.9, "explanation": [{"text": "hi", "start": 0, "end": 2, "score": "big"}], "window": []},
        {"label": "spam", "p_spam": 0.9, "explanation": [], "window": [{"start": 0, "end": 7, "token_start": 0, "token_end": 1}]},
        {"label": "spam", "p_spam": 0.9, "explanation": [], "window": [{"start": True, "end": 2, "token_start": 0, "token_end": 1}]},
    ],
)
def test_a_malformed_explanation_is_one_line(result):
    """An explanation whose spans are not the text's, or with no window, is a malformed answer."""
    answers = {"/v1/model": {"labels": ["ham", "spam"], "positive_label": "spam"}, "/v1/classify": {"results": [result]}}
    with answering(answers) as url:
        out = CliRunner().invoke(cli_app, ["predict", "--server", url, "--explain", "--format", "text", "hi"])
    assert out.exit_code == 1 and out.stderr == f"Error: the service at {url} sent a malformed answer\n" and out.stdout == ""


def test_a_redirect_or_a_broken_answer_is_one_line_and_the_key_stays_home():
    """A redirect is not followed (urllib would send the API key to wherever it points, another
    host too); an answer with no HTTP status line, or cut short of its Content-Length, is a
    malformed answer: each one line and exit 1, not 'unexpected BadStatusLine' over two lines."""
    from loopback_server import LoopbackServer

    model = json.dumps({"labels": ["ham", "spam"], "positive_label": "spam"}).encode()
    with LoopbackServer() as elsewhere, LoopbackServer() as service:
        elsewhere.add("/v1/model", model)
        service.add("/v1/model", status=307, headers={"Location": elsewhere.url("/v1/model")})
        result = CliRunner().invoke(cli_app, ["predict", "--server", service.base_url, "hi"], env={"SPAMTUNE_API_KEY": KEY})
        assert result.exit_code == 1 and result.stderr == (
            f"Error: the service at {service.base_url} answered with a redirect to {elsewhere.url('/v1/model')!r} "
            "(HTTP 307): give the service's own URL (redirects are not followed: the API key would go along)\n"
        )
        assert elsewhere.requests == []
        # A refusal whose body is cut short: its reason unread, the status says it (not 'unexpected IncompleteRead').
        service.add("/v1/model", b'{"error": "the service is shutting down"}', status=503, script=["drop"])
        result = CliRunner().invoke(cli_app, ["predict", "--server", service.base_url, "hi"])
        assert result.exit_code == 1 and result.stderr == (
            f"Error: the service at {service.base_url} refused the request: Service Unavailable (HTTP 503)\n"
        )
        service.add("/v1/model", model, script=["drop"])  # half the body, then the connection closed
        result = CliRunner().invoke(cli_app, ["predict", "--server", service.base_url, "hi"])
        assert result.exit_code == 1 and result.stderr == (
            f"Error: the service at {service.base_url} sent a malformed answer (is it `spamtune serve`?)\n"
        )

    with socket.socket() as listener:  # answers anything with a line that is no HTTP
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)

        def answer_garbage():
            with listener.accept()[0] as connection:
                connection.recv(65536)
                connection.sendall(b"garbage\r\n\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = CliRunner().invoke(cli_app, ["predict", "--server", url, "hi"])
        thread.join(10)
    assert result.exit_code == 1 and result.stderr == f"Error: the service at {url} sent a malformed answer (is it `spamtune serve`?)\n"


def test_an_endless_or_trickling_answer_ends_the_client_in_time(monkeypatch):
    """A server that streams without end was read into memory until none was left, and one that
    trickles a byte now and then (each read within the timeout) held the client forever."""
    from loopback_server import LoopbackServer

    from spamtune import client as client_module

    monkeypatch.setattr(client_module, "MAX_ANSWER_BYTES", 1 << 20, raising=False)
    model = json.dumps({"labels": ["ham", "spam"], "positive_label": "spam"}).encode()
    with LoopbackServer() as service:
        service.add("/v1/model", b"x" * 4096, stream_up_to=64 << 20)
        with pytest.raises(SpamtuneError, match=r"sent an answer of over 1,048,576 bytes \(is it `spamtune serve`\?\)$"):
            client_module.SpamtuneClient(service.base_url).model()
        service.add("/v1/model", model + b" " * 100, pace=(2, 0.05))  # a read every 0.05 s, 3 s in all
        started = time.monotonic()
        with pytest.raises(SpamtuneError, match="the answer did not arrive within 1 s"):
            client_module.SpamtuneClient(service.base_url, timeout=1).model()
        assert time.monotonic() - started < 2.5
        service.add("/v1/model", b'{"error": "no"}' + b" " * 200_000, status=503)  # a refusal is read in part
        with pytest.raises(SpamtuneError, match=r"refused the request: Service Unavailable \(HTTP 503\)$"):
            client_module.SpamtuneClient(service.base_url).model()


def test_client_errors_are_one_line(service, clf, tmp_path):
    result = CliRunner().invoke(cli_app, ["predict", "--server", "http://127.0.0.1:9", "hi"])
    assert result.exit_code == 1 and "cannot reach the service at http://127.0.0.1:9" in result.stderr
    for url in ("http://[::1", "http://127.0.0.1:abc", "http://127.0.0.1:99999", "http://127.0.0.1:9?x=1", "http://127.0.0.1:9#top",
                "http://user:secret@127.0.0.1:9", "http://127.0.0.1:9/a b", "http://127.0.0.1:9/\r\nX-Injected: 1"):
        result = CliRunner().invoke(cli_app, ["predict", "--server", url, "hi"])
        assert result.exit_code == 1 and result.stderr == f"Error: not a service URL: {url!r} (expected http://HOST:PORT)\n"
    for key in ("ключ-ключ-ключ-ключ", "line\nbreak"):
        result = CliRunner().invoke(cli_app, ["predict", "--server", service, "hi"], env={"SPAMTUNE_API_KEY": key})
        assert result.exit_code == 1 and "printable ASCII" in result.stderr and result.stderr.count("\n") == 1
    result = CliRunner().invoke(cli_app, ["filter", "--server", "http://[::1"], input=MAIL)
    assert result.exit_code == 1 and result.stdout_bytes == MAIL and "not a service URL" in result.stderr
    result = CliRunner().invoke(cli_app, ["predict", "--server", service, "--run", str(tmp_path), "hi"])
    assert result.exit_code == 2 and "--run cannot be used with --server" in result.stderr
    result = CliRunner().invoke(cli_app, ["predict", "--server", service, "--explain", "--format", "label", "hi"])
    assert result.exit_code == 2 and result.stderr == "Error: --explain needs --format text, tsv or jsonl (label prints the label only)\n"
    with running(create_app(clf, ServeSettings(api_key=KEY))) as url:
        result = CliRunner().invoke(cli_app, ["predict", "--server", url, "hi"], env={"SPAMTUNE_API_KEY": ""})
        assert result.exit_code == 1 and "missing or wrong API key" in result.stderr and "(HTTP 401)" in result.stderr
        result = CliRunner().invoke(cli_app, ["predict", "--server", url, "--format", "label", "hi"],
                                    env={"SPAMTUNE_API_KEY": KEY})  # fmt: skip
        assert result.exit_code == 0 and result.stdout in ("spam\n", "ham\n")
