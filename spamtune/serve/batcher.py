"""Dynamic batching: concurrent requests share forward passes, run on one worker thread.

Every request hands its texts to ``DynamicBatcher.classify`` and awaits the answer; the event
loop never runs the model itself, so it keeps accepting connections and serving ``/healthz``
while a forward pass runs. The worker takes the oldest waiting request, adds every other
request of the same kind already waiting (up to ``max_batch`` texts in all), and, when others
were waiting, lingers for more while the batch is not full: up to ``max_wait_s``, and never
more than 5% of the previous pass's time. An idle service therefore answers a lone request at
once, and a busy one classifies what piled up during the previous pass together:
``SpamClassifier.predict`` then sorts those texts by length into batches of similar length
(``forward.predict_logits``), as ``spamtune predict --file`` does with a chunk of lines. Each kind of request (plain texts, the
texts of mail messages, and either of them to explain) has its own predict function; a pass runs one kind,
and a kind may have a smaller batch limit of its own (explaining a text costs dozens of passes).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Job:
    kind: str
    texts: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class PassStats:
    """What one forward pass did: reported to ``on_pass`` (the metrics) after it finished."""

    texts: int
    requests: int
    seconds: float
    waited_s: float  # the oldest request's time in the queue before its pass began


class ServiceStopping(RuntimeError):
    """The batcher is shutting down and takes no new work."""


_STOP = object()

# How often, at most, an idle worker hands freed memory back to the system.
TRIM_INTERVAL_S = 1.0
# While busy, a pass lingers for more requests at most this share of the previous pass's time,
# so waiting never idles the model for more than about 5% of its work. Under sustained load the
# clients answered by one pass send their next requests a few milliseconds after it ends; a
# pass that starts at once leaves them to the pass after, and the requests settle into two or
# three cohorts, each a smaller and so less efficient batch. Lingering a little lets them join.
LINGER_SHARE = 0.05


def _heap_trimmer():
    """glibc's ``malloc_trim``, or None elsewhere.

    Forward passes over batches of ever-different shapes leave the C heap fragmented: freed
    activation buffers stay mapped, and a long-running service's memory would creep up with
    every new mix of lengths. Trimming when the queue is empty returns them to the system
    without costing a waiting request anything.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc.malloc_trim if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


class DynamicBatcher:
    """Runs ``predictors[kind](texts) -> list`` on one worker thread for the requests of an event loop."""

    def __init__(
        self,
        predictors: dict[str, Callable[[list[str]], Sequence[Any]]],
        max_batch: int = 128,
        max_wait_s: float = 0.002,
        on_pass: Callable[[PassStats], None] | None = None,
        kind_max_batch: dict[str, int] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._predictors = dict(predictors)
        self.max_batch = max_batch
        self._kind_max_batch = dict(kind_max_batch or {})
        self.max_wait_s = max_wait_s
        self._on_pass = on_pass
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._carry: _Job | None = None  # a request that did not fit the last batch: first in the next
        self._thread = threading.Thread(target=self._work, name="spamtune-inference", daemon=True)
        self._accepting = False
        self._trim = _heap_trimmer()
        self._last_trim = 0.0
        self._untrimmed = False  # passes ran since the last trim
        self._last_pass_s = 0.0  # how long the last pass took: bounds the next one's lingering

    def start(self) -> None:
        self._accepting = True
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._accepting and self._thread.is_alive()

    async def classify(self, texts: list[str], kind: str = "text") -> list:
        """The predictions for ``texts``, in order, from a forward pass shared with other requests."""
        if not self._accepting:
            raise ServiceStopping("the service is shutting down")
        if kind not in self._predictors:
            raise ValueError(f"no predictor for {kind!r}")
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        job = _Job(kind, texts, loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    def stop(self, timeout: float | None = None) -> None:
        """Finish the requests already queued, then end the worker thread."""
        self._accepting = False
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker thread

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)
            self._untrimmed = True
            if self._queue.empty() and time.monotonic() - self._last_trim > TRIM_INTERVAL_S:
                self._trim_heap()  # under steady load, between passes, at most once a second

    def _trim_heap(self) -> None:
        if self._trim is not None and self._untrimmed:
            self._trim(0)
        self._untrimmed = False
        self._last_trim = time.monotonic()

    def _next_job(self):
        """The next queued request; a worker that falls idle trims the heap once first."""
        try:
            return self._queue.get(timeout=TRIM_INTERVAL_S)
        except queue.Empty:
            self._trim_heap()
            return self._queue.get()

    def _next_batch(self) -> list[_Job] | None:
        first = self._carry if self._carry is not None else self._next_job()
        self._carry = None
        if first is _STOP:
            return None
        batch, size = [first], len(first.texts)
        limit = self._kind_max_batch.get(first.kind, self.max_batch)
        busy = not self._queue.empty()  # others arrived while the last pass ran: worth waiting for more
        linger = min(self.max_wait_s, LINGER_SHARE * self._last_pass_s) if busy else 0.0
        deadline = time.perf_counter() + linger
        while size < limit:
            timeout = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or job.kind != first.kind or size + len(job.texts) > limit:
                self._carry = job
                break
            batch.append(job)
            size += len(job.texts)
        return batch

    def _run(self, batch: list[_Job]) -> None:
        texts = [t for job in batch for t in job.texts]
        start = time.perf_counter()
        try:
            results = list(self._predictors[batch[0].kind](texts))
        except BaseException as exc:  # noqa: BLE001 - handed to the requests, never kills the worker
            self._last_pass_s = time.perf_counter() - start
            for job in batch:
                job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
            return
        elapsed = self._last_pass_s = time.perf_counter() - start
        offset = 0
        for job in batch:
            part = results[offset : offset + len(job.texts)]
            offset += len(job.texts)
            job.loop.call_soon_threadsafe(_settle, job.future, part, None)
        if self._on_pass is not None:
            self._on_pass(PassStats(len(texts), len(batch), elapsed, start - batch[0].enqueued))


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
