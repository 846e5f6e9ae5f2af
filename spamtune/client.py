"""A client for a running ``spamtune serve``: the standard library only, never torch.

>>> client = SpamtuneClient("http://127.0.0.1:8080")          # api_key=... when the service asks for one
>>> client.classify(["WINNER!! Claim your prize", "lunch?"])
[Verdict(label='spam', p_spam=0.98...), Verdict(label='ham', p_spam=0.01...)]
>>> client.classify(["WINNER!! Claim your prize"], explain=True)[0].explanation.towards_spam(3)
[Span(text='WINNER!!', start=0, end=8, score=2.1...), ...]
>>> client.classify_mail(open("message.eml", "rb").read()).headers
{'X-Spamtune-Status': 'Yes, p_spam=0.981, threshold=0.5', 'X-Spamtune-Run': '...'}

Starting a client costs a Python interpreter and ``urllib``, not a model: this is what
``spamtune predict --server URL`` and ``spamtune filter --server URL`` use. Any failure (the
service unreachable, a refusal, a malformed answer) raises ``SpamtuneError`` with one line.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from spamtune.errors import SpamtuneError
from spamtune.explanation import Explanation

ENV_SERVER = "SPAMTUNE_SERVER"
ENV_API_KEY = "SPAMTUNE_API_KEY"
DEFAULT_TIMEOUT_S = 60.0
# Used until the service has said its own limits (GET /v1/model): the defaults of `spamtune serve`.
DEFAULT_MAX_TEXTS = 256
DEFAULT_MAX_EXPLAIN_TEXTS = 8
DEFAULT_MAX_BODY_BYTES = 1 << 20
# The largest answer read: a service's largest, an explained mail message with the text read of
# it, is a few times its --max-mail-bytes. A server that streams without end (no spamtune) is
# cut off there, rather than fill the memory.
MAX_ANSWER_BYTES = 256 << 20
MAX_ERROR_BYTES = 64 << 10  # a refusal is one line
# The limits of GET /v1/model that size the client's requests: each, when given, a positive count.
LIMITS = ("max_texts", "max_explain_texts", "max_body_bytes", "max_mail_bytes")


API_KEY_RULE = "the API key must be printable ASCII, with no space at either end (it travels in an HTTP header)"


def is_valid_api_key(key: str) -> bool:
    """Whether ``key`` can be sent as ``Authorization: Bearer KEY``: an HTTP header carries
    printable ASCII (other characters arrive altered or not at all), and spaces around a
    header value are dropped."""
    return key == key.strip(" ") and all(" " <= c <= "~" for c in key)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as an error, not followed: urllib would send the API key along to
    wherever it points, another host included, and turn a POST into a GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class Verdict:
    """One classified text: its label, and the probability of the positive class (spam)."""

    label: str
    p_spam: float


@dataclass(frozen=True)
class ExplainedVerdict(Verdict):
    """A classified text with the words that pushed its verdict (``classify(..., explain=True)``)."""

    explanation: Explanation


@dataclass(frozen=True)
class MailVerdict(Verdict):
    """A classified message: the threshold and run that decided it, the headers ``spamtune filter``
    would add, whether the message had defects its reading worked around, and (``explain``) why."""

    threshold: float
    run: str
    headers: dict[str, str]
    damaged: bool = False
    explanation: Explanation | None = None


class SpamtuneClient:
    """Talks to one service at ``url`` (``http://host:port``)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        try:
            parsed = urllib.parse.urlsplit(url)
            parsed.port  # noqa: B018 - a port that is not a number raises here, not at the first request
        except ValueError:  # an unclosed [IPv6 address, a port out of range or not a number
            parsed = None
        # The client adds its paths to the URL: a query or fragment in it took them in (a request
        # for "/?x=1/v1/model", answered by the web page), "user:pass@" was read as part of the
        # host name, and a space or control character failed in http.client, each reported as
        # a malformed answer or an unknown host rather than as the URL it is.
        if (
            parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc
            or any(c in url for c in "?#@") or not all("!" <= c <= "~" for c in url)
        ):  # fmt: skip
            raise SpamtuneError(f"not a service URL: {url!r} (expected http://HOST:PORT)")
        if api_key and not is_valid_api_key(api_key):
            raise SpamtuneError(API_KEY_RULE)
        self.url = url.rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout
        self._info: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the API

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def model(self) -> dict[str, Any]:
        """The run being served: name, labels, positive label, threshold, limits (cached)."""
        if self._info is None:
            info = self._request("GET", "/v1/model")
            labels, limits = info.get("labels"), info.get("limits", {})
            # What every caller reads: another JSON service at this URL answers without them. A
            # label is printable text, as `prepare` makes it: callers write labels to terminals.
            # The limits size every request: read unchecked, a list or a string there failed
            # the caller with an unexpected AttributeError or ValueError.
            if (
                not isinstance(labels, list) or info.get("positive_label") not in labels
                or not all(isinstance(label, str) and label.isprintable() for label in labels)
                or not isinstance(limits, dict) or not all(_is_count(limits.get(name, 1)) for name in LIMITS)
            ):  # fmt: skip
                raise SpamtuneError(f"the service at {self.url} sent a malformed answer (is it `spamtune serve`?)")
            self._info = info
        return self._info

    def classify(self, texts: list[str], threshold: float | None = None, explain: bool = False) -> list[Verdict]:
        """Verdicts for ``texts`` in order, sent in as many requests as the service's limits need;
        with ``explain``, ``ExplainedVerdict``s carrying ``predict --explain``'s spans."""
        verdicts: list[Verdict] = []
        # As the service reads them (a JSON body cannot carry them in UTF-8): as U+FFFD, one
        # character for one, so that an explanation's spans are spans of the text sent.
        texts = [well_formed(text) for text in texts]
        info = self.model()  # read already: the requests are sized by its limits
        labels = info["labels"]
        max_texts = int(info.get("limits", {}).get("max_explain_texts", DEFAULT_MAX_EXPLAIN_TEXTS)) if explain else None
        for part in self._requests_for(texts, max_texts):
            body: dict[str, Any] = {"texts": part}
            if threshold is not None:
                body["threshold"] = threshold
            if explain:
                body["explain"] = True
            answer = self._request("POST", "/v1/classify", json.dumps(body, ensure_ascii=False).encode())
            results = answer.get("results")
            try:
                if not isinstance(results, list) or len(results) != len(part):
                    raise ValueError("not one result per text")
                if any(r["label"] not in labels for r in results):  # it might hold an escape sequence
                    raise ValueError("a label the run does not have")
                verdicts.extend(_verdict(text, r, explain) for text, r in zip(part, results))
            except (KeyError, TypeError, ValueError):
                raise SpamtuneError(f"the service at {self.url} sent a malformed answer") from None
        return verdicts

    def classify_mail(self, raw: bytes, threshold: float | None = None, explain: bool = False) -> MailVerdict:
        """The verdict on one raw RFC 822 message, as ``POST /v1/classify/mail`` gives it; with
        ``explain``, its ``explanation``, whose offsets index the text the model read of it."""
        parameters = {"threshold": threshold} if threshold is not None else {}
        if explain:
            parameters["explain"] = "true"
        query = "?" + urllib.parse.urlencode(parameters) if parameters else ""
        answer = self._request("POST", "/v1/classify/mail" + query, raw, content_type="message/rfc822")
        try:
            p_spam, damaged = _probability(answer["p_spam"]), answer.get("damaged", False)
            if answer["label"] not in self.model()["labels"] or not isinstance(damaged, bool):
                raise ValueError("a label the run does not have, or damage that is no boolean")
            explanation = None
            if explain:
                explanation = Explanation.from_answer(answer["text"], p_spam, answer["explanation"], answer["window"])
            return MailVerdict(
                answer["label"], p_spam, _probability(answer["threshold"]), str(answer["run"]), dict(answer["headers"]),
                damaged, explanation,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            raise SpamtuneError(f"the service at {self.url} sent a malformed answer") from None

    # ------------------------------------------------------------------ plumbing

    def text_budget(self) -> int:
        """The most bytes one text may take in a request (``text_cost``): the service's body limit,
        less room for the JSON around it."""
        limits = self.model().get("limits", {})
        return int(limits.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)) - 64

    def _requests_for(self, texts: list[str], max_texts: int | None = None) -> Iterator[list[str]]:
        """``texts`` cut into requests within the service's text count (or ``max_texts``) and body size limits."""
        limits = self.model().get("limits", {})
        max_texts = max_texts or int(limits.get("max_texts", DEFAULT_MAX_TEXTS))
        budget = self.text_budget()
        part: list[str] = []
        size = 0
        for text in texts:
            cost = text_cost(text)
            if cost > budget:
                raise SpamtuneError(
                    f"a message of {cost:,} bytes is larger than the service accepts ({budget:,}); "
                    "raise its --max-body-bytes or classify it locally"
                )
            if part and (len(part) == max_texts or size + cost > budget):
                yield part
                part, size = [], 0
            part.append(text)
            size += cost
        if part:
            yield part

    def _read_answer(self, response, limit: int) -> bytes:
        """The body of ``response``, within ``self.timeout`` seconds in all (not only between two
        reads: a server that trickles a byte now and then held the client forever), and of at
        most ``limit`` bytes; raises ``_TooLarge`` past it, ``TimeoutError`` past the time."""
        deadline = time.monotonic() + self.timeout
        payload = bytearray()
        while chunk := response.read1(65536):  # read1: what one read gives, not a wait for all 64 KiB
            payload += chunk
            if len(payload) > limit:
                raise _TooLarge
            if time.monotonic() > deadline:
                raise TimeoutError(f"the answer did not arrive within {self.timeout:g} s")
        if getattr(response, "length", None):  # read1 ends quietly where read raised: cut short of its length
            raise http.client.IncompleteRead(bytes(payload), response.length)
        return bytes(payload)

    def _error_line(self, exc: urllib.error.HTTPError) -> str:
        """The service's one-line reason (``{"error": ...}``) and the status."""
        try:
            message = json.loads(self._read_answer(exc, MAX_ERROR_BYTES)).get("error")
        except (ValueError, AttributeError, OSError, http.client.HTTPException, _TooLarge):  # a body cut short, or endless
            message = None
        return f"{message or exc.reason} (HTTP {exc.code})"

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json") -> dict:
        headers = {"Accept": "application/json", "User-Agent": "spamtune-client"}
        if body is not None:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                payload = self._read_answer(response, MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                location = exc.headers.get("Location", "")[:200]
                raise SpamtuneError(
                    f"the service at {self.url} answered with a redirect to {location!r} (HTTP {exc.code}): give "
                    "the service's own URL (redirects are not followed: the API key would go along)"
                ) from None
            raise SpamtuneError(f"the service at {self.url} refused the request: {self._error_line(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SpamtuneError(f"cannot reach the service at {self.url}: {reason}") from None
        except http.client.HTTPException:  # no HTTP status line, or a body cut short of its length
            raise SpamtuneError(f"the service at {self.url} sent a malformed answer (is it `spamtune serve`?)") from None
        except _TooLarge:
            raise SpamtuneError(
                f"the service at {self.url} sent an answer of over {MAX_ANSWER_BYTES:,} bytes (is it `spamtune serve`?)"
            ) from None
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise SpamtuneError(f"the service at {self.url} sent a malformed answer")
        return answer


def _verdict(text: str, result: dict, explain: bool) -> Verdict:
    """One result of ``/v1/classify`` for ``text``; a ValueError (or KeyError, TypeError) if malformed."""
    p_spam = _probability(result["p_spam"])
    if not explain:
        return Verdict(result["label"], p_spam)
    explanation = Explanation.from_answer(text, p_spam, result["explanation"], result["window"])
    return ExplainedVerdict(result["label"], p_spam, explanation)


class _TooLarge(Exception):
    """An answer past ``MAX_ANSWER_BYTES`` (an error's past ``MAX_ERROR_BYTES``)."""


def _probability(value: Any) -> float:
    """A JSON number in [0, 1] (a p_spam, a threshold), else a ValueError: a NaN, a string, ``true``
    or an integer too large for a float went into the output and a mail's headers as they came."""
    # Compared before any conversion: NaN fails the comparison, and float(10**400) would overflow.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError("not a probability")
    return float(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def well_formed(text: str) -> str:
    """``text`` with each lone surrogate (JSON's ``"\\ud800"``, a byte that is no UTF-8 read with
    surrogateescape) as U+FFFD: what the tokenizer reads it as, and what predict reads for bytes
    that are not UTF-8. One character for one, so offsets still hold."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def client_from_env(url: str | None = None, api_key: str | None = None) -> SpamtuneClient:
    """A client for ``url`` (else ``$SPAMTUNE_SERVER``) with ``api_key`` (else ``$SPAMTUNE_API_KEY``)."""
    url = url or os.environ.get(ENV_SERVER)
    if not url:
        raise SpamtuneError(f"no service URL: give --server URL or set {ENV_SERVER}")
    return SpamtuneClient(url, api_key or os.environ.get(ENV_API_KEY))


def text_cost(text: str) -> int:
    """The bytes ``text`` takes in a request: its JSON form as sent (escapes and non-ASCII bytes
    counted), and a separator."""
    return len(json.dumps(text, ensure_ascii=False).encode()) + 2


def fitting_start(text: str, budget: int) -> str:
    """The longest start of ``text`` whose ``text_cost`` is at most ``budget`` (all of it when it fits)."""
    # No character takes more than 6 bytes in JSON (``\u001b``): most texts fit by that bound alone,
    # without being encoded here as well as in the request.
    if 6 * len(text) + 2 <= budget or text_cost(text) <= budget:
        return text
    low, high = 0, len(text)  # text[:low] fits, text[:high] does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if text_cost(text[:middle]) <= budget else (low, middle)
    return text[:low]
