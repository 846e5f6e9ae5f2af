"""The service's Prometheus metrics, in a registry of its own (so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from spamtune.serve.batcher import PassStats

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Request latency from a loopback health check (~1 ms) to a large batch on a slow CPU (seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "spamtune_http_requests", "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "code"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "spamtune_http_errors", "HTTP requests answered with a 4xx or 5xx status, by endpoint and status code.",
            ["endpoint", "code"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "spamtune_http_request_duration_seconds", "Time from request start to response end, by endpoint.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.messages = Counter("spamtune_messages_classified", "Messages classified.", registry=r)
        self.batch_texts = Histogram(
            "spamtune_batch_size_messages", "Messages per forward pass (dynamic batching).",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "spamtune_batch_size_requests", "Requests sharing one forward pass.", buckets=BATCH_BUCKETS, registry=r
        )
        self.pass_seconds = Histogram(
            "spamtune_forward_pass_seconds", "Time of one forward pass.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "spamtune_queue_wait_seconds", "Time a request waited before its forward pass began.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("spamtune_requests_in_flight", "Classification requests queued or running.", registry=r)

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.count_answer(endpoint, code)
        self.latency.labels(endpoint).observe(seconds)

    def count_answer(self, endpoint: str, code: int) -> None:
        """An answer in the request and error counters alone: for one whose latency is unknown."""
        self.requests.labels(endpoint, str(code)).inc()
        if code >= 400:
            self.errors.labels(endpoint, str(code)).inc()

    def observe_pass(self, stats: PassStats) -> None:
        """Called from the inference thread; prometheus_client's metrics are thread-safe."""
        self.messages.inc(stats.texts)
        self.batch_texts.observe(stats.texts)
        self.batch_requests.observe(stats.requests)
        self.pass_seconds.observe(stats.seconds)
        self.queue_wait.observe(stats.waited_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
