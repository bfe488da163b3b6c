"""Dynamic batching across concurrent requests: one model copy, one worker thread.

Requests from many HTTP clients are tokenised (in a thread pool, never on the event loop),
then queued here as *items* (one per text). The worker thread takes the waiting items in
arrival order up to one pass's worth of tokens, sorts them by length, cuts them into forward passes of
at most ``max_batch_tokens`` padded tokens / ``max_batch_size`` texts, runs the encoder and
hands each request its rows back on the event loop. A request's texts can be spread over
several passes and share passes with other requests' texts; each request only wakes up when
all of its rows are done.

Backpressure: the queue holds at most ``max_queued_tokens`` tokens (and ``max_queued_texts``
texts); a request that does not fit is refused at once with :class:`QueueFull` (the app turns
it into ``429`` + ``Retry-After``) instead of waiting without bound. A cancelled request
(client gone, timeout) has its not-yet-computed texts dropped from the queue.

Example::

    >>> import asyncio, tempfile
    >>> from bgem3 import Encoder
    >>> from bgem3.testing import make_m3_checkpoint
    >>> enc = Encoder(make_m3_checkpoint(tempfile.mkdtemp()), device="cpu")
    >>> sched = Batcher(enc); sched.start()
    >>> async def go():
    ...     ids = enc.tokenize(["hello world", "hi"])
    ...     return await sched.submit(ids, dense=True, sparse=False, colbert=False)
    >>> out = asyncio.run(go())
    >>> out.dense.shape[0]
    2
    >>> sched.stop()
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .metrics import Metrics

logger = logging.getLogger(__name__)

__all__ = ["Batcher", "QueueFull", "ShuttingDown", "BatchResult"]


class QueueFull(Exception):
    """The queue has no room for this request now; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is draining: it finishes what it has but takes nothing new."""


@dataclass
class BatchResult:
    """One request's rows, in the order its texts were given."""

    dense: Optional[np.ndarray]
    sparse: Optional[list]
    colbert: Optional[list]
    token_counts: np.ndarray


@dataclass(eq=False)
class _Request:
    n: int
    flags: tuple[bool, bool, bool]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    tokens: int
    dense: Optional[np.ndarray] = None
    sparse: Optional[list] = None
    colbert: Optional[list] = None
    remaining: int = 0
    cancelled: bool = False
    failed: bool = False
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(eq=False)
class _Call:
    fn: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    tokens: int
    texts: int
    cancelled: bool = False


@dataclass(eq=False)
class _Item:
    request: _Request
    row: int
    ids: list


class Batcher:
    """Queue + worker thread that batches texts from concurrent requests through one encoder.

    Args:
        encoder: a loaded :class:`~bgem3.Encoder` (its ``forward_batch`` runs the batches).
        max_batch_tokens: most padded tokens (longest x count) in one forward pass.
        max_batch_size: most texts in one forward pass.
        max_queued_tokens / max_queued_texts: the queue bound; beyond it :meth:`submit`
            raises :class:`QueueFull`.
        metrics: where queue depth, batch sizes and token counts are recorded.
    """

    def __init__(self, encoder: Any, *, max_batch_tokens: int = 16384, max_batch_size: int = 64,
                 max_queued_tokens: int = 262144, max_queued_texts: int = 4096,
                 metrics: Optional[Metrics] = None) -> None:
        self.encoder = encoder
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_size = int(max_batch_size)
        self.max_queued_tokens = int(max_queued_tokens)
        self.max_queued_texts = int(max_queued_texts)
        self.metrics = metrics or Metrics()
        self._items: collections.deque[_Item] = collections.deque()
        self._calls: collections.deque[_Call] = collections.deque()  # whole requests run by the worker (submit_call)
        self._queued_tokens = 0
        self._in_flight = 0  # requests submitted and not yet answered
        self._cond = threading.Condition()
        self._closing = False
        self._stopped = False
        self._thread: Optional[threading.Thread] = None
        self._recent_rate = 0.0  # tokens/s of the last batches, for Retry-After

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bgem3-batcher", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Refuse new work; what is queued is still computed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Finish the queued work, then stop the worker thread."""
        self.close()
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def depth(self) -> tuple[int, int]:
        """``(texts, tokens)`` waiting in the queue now."""
        with self._cond:
            return len(self._items), self._queued_tokens

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ------------------------------------------------------------------ submitting
    def retry_after(self) -> int:
        """Seconds a refused client should wait: the time the queue needs to drain, 1..30."""
        rate = self._recent_rate or 2000.0
        return int(min(30, max(1, round(self._queued_tokens / rate))))

    async def submit(self, ids: list, *, dense: bool, sparse: bool, colbert: bool) -> BatchResult:
        """Queue one request's token ids; wait for its rows. Cancel-safe: a cancelled
        waiter's texts are dropped from the queue (those in a running pass are discarded)."""
        loop = asyncio.get_running_loop()
        n = len(ids)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        tokens = int(lengths.sum())
        req = _Request(n=n, flags=(bool(dense), bool(sparse), bool(colbert)), loop=loop,
                       future=loop.create_future(), tokens=tokens, remaining=n, lengths=lengths)
        if dense:
            req.dense = np.empty((n, self.encoder.hidden_size), dtype=np.float32)
        if sparse:
            req.sparse = [None] * n
        if colbert:
            req.colbert = [None] * n
        if n == 0:
            return BatchResult(req.dense, req.sparse, req.colbert, lengths)
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new requests; retry on another replica")
            if self._items and (self._queued_tokens + tokens > self.max_queued_tokens
                                or len(self._items) + n > self.max_queued_texts):
                self.metrics.rejected += 1
                raise QueueFull(
                    f"the server is overloaded: {len(self._items)} texts / {self._queued_tokens} tokens are queued "
                    f"(limits {self.max_queued_texts} texts, {self.max_queued_tokens} tokens); retry later",
                    retry_after=self.retry_after())
            self._items.extend(_Item(req, i, ids[i]) for i in range(n))
            self._queued_tokens += tokens
            self._in_flight += 1
            self.metrics.queue_texts = len(self._items)
            self._cond.notify()
        try:
            return await req.future
        except asyncio.CancelledError:
            self._cancel(req)
            raise
        finally:
            with self._cond:
                self._in_flight -= 1

    async def submit_call(self, fn: Any, *, texts: int, tokens: int) -> Any:
        """Run ``fn()`` (a whole request's encoding through the encoder's public API) in the worker
        thread, between two passes, and return its result. For what the token-level batching
        cannot express (a prompt left out of pooling, bge-en-icl's few-shot queries): such a
        request is not batched with others, but the model is still only ever run by the worker.
        ``texts`` / ``tokens`` count against the queue bound like :meth:`submit`'s."""
        loop = asyncio.get_running_loop()
        call = _Call(fn=fn, loop=loop, future=loop.create_future(), tokens=int(tokens), texts=int(texts))
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new requests; retry on another replica")
            queued = len(self._items) + sum(c.texts for c in self._calls)
            if queued and (self._queued_tokens + tokens > self.max_queued_tokens
                           or queued + texts > self.max_queued_texts):
                self.metrics.rejected += 1
                raise QueueFull(
                    f"the server is overloaded: {queued} texts / {self._queued_tokens} tokens are queued "
                    f"(limits {self.max_queued_texts} texts, {self.max_queued_tokens} tokens); retry later",
                    retry_after=self.retry_after())
            self._calls.append(call)
            self._queued_tokens += call.tokens
            self._in_flight += 1
            self._cond.notify()
        try:
            return await call.future
        except asyncio.CancelledError:
            call.cancelled = True
            self.metrics.cancelled += 1
            raise
        finally:
            with self._cond:
                self._in_flight -= 1

    def _run_call(self, call: "_Call") -> None:
        if call.cancelled:
            return
        t0 = time.perf_counter()
        try:
            result = call.fn()
        except Exception as exc:
            call.loop.call_soon_threadsafe(_set_exception, call.future, exc)
            return
        self.metrics.observe_batch(call.texts, call.tokens, time.perf_counter() - t0)
        call.loop.call_soon_threadsafe(_set_result, call.future, result)

    def _cancel(self, req: _Request) -> None:
        with self._cond:
            if req.cancelled:
                return
            req.cancelled = True
            kept = collections.deque(it for it in self._items if it.request is not req)
            dropped = len(self._items) - len(kept)
            if dropped:
                self._queued_tokens -= sum(len(it.ids) for it in self._items if it.request is req)
                self._items = kept
                self.metrics.queue_texts = len(self._items)
            self.metrics.cancelled += 1

    # ------------------------------------------------------------------ the worker
    def _take(self) -> list[_Item]:
        """Items for the next round: arrival order, until one pass's worth of tokens
        (``max_batch_tokens``) is taken. A round is sorted by length, so a larger round would let a
        later request's texts go before an earlier one's and make every request of the round wait
        for its end; with one pass's worth, requests complete close to arrival order."""
        budget = self.max_batch_tokens
        taken: list[_Item] = []
        used = 0
        while self._items:
            it = self._items[0]
            if taken and used + len(it.ids) > budget:
                break
            self._items.popleft()
            taken.append(it)
            used += len(it.ids)
        self._queued_tokens -= used
        self.metrics.queue_texts = len(self._items)
        return taken

    def _plan(self, items: list[_Item]) -> list[list[_Item]]:
        """Group by requested outputs, sort by length (longest first), cut by token budget."""
        groups: dict[tuple, list[_Item]] = {}
        for it in items:
            groups.setdefault(it.request.flags, []).append(it)
        batches = []
        for group in groups.values():
            group.sort(key=lambda it: -len(it.ids))
            i = 0
            while i < len(group):
                longest = max(1, len(group[i].ids))
                cap = max(1, min(self.max_batch_size, self.max_batch_tokens // longest))
                batches.append(group[i:i + cap])
                i += cap
        return batches

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._calls and not self._stopped:
                    self._cond.wait(timeout=1.0)
                if not self._items and not self._calls and self._stopped:
                    return
                call = self._calls.popleft() if self._calls else None
                if call is not None:
                    self._queued_tokens -= call.tokens
                items = self._take() if call is None else []
            if call is not None:
                self._run_call(call)
                continue
            for batch in self._plan(items):
                batch = [it for it in batch if not it.request.cancelled and not it.request.failed]
                if batch:
                    self._run_batch(batch)

    def _run_batch(self, batch: list[_Item]) -> None:
        want_dense, want_sparse, want_colbert = batch[0].request.flags
        t0 = time.perf_counter()
        try:
            dense_b, sparse_b, colbert_b = self.encoder.forward_batch([it.ids for it in batch], want_dense, want_sparse,
                                                                      want_colbert)
        except Exception as exc:  # the model failed: fail every request in this pass, keep serving
            logger.exception("encoding a batch of %d texts failed", len(batch))
            self.metrics.failed_batches += 1
            for req in {it.request for it in batch}:
                if not req.failed:
                    req.failed = True
                    req.loop.call_soon_threadsafe(_set_exception, req.future, exc)
            return
        dt = time.perf_counter() - t0
        ntok = sum(len(it.ids) for it in batch)
        self._recent_rate = 0.7 * self._recent_rate + 0.3 * (ntok / max(dt, 1e-6)) if self._recent_rate else ntok / max(dt, 1e-6)
        self.metrics.observe_batch(len(batch), ntok, dt)
        done = []
        for j, it in enumerate(batch):
            req = it.request
            if want_dense:
                req.dense[it.row] = dense_b[j]
            if want_sparse:
                req.sparse[it.row] = sparse_b[j]
            if want_colbert:
                req.colbert[it.row] = colbert_b[j]
            req.remaining -= 1
            if req.remaining == 0:
                done.append(req)
        for req in done:
            if not req.cancelled:
                res = BatchResult(req.dense, req.sparse, req.colbert, req.lengths)
                req.loop.call_soon_threadsafe(_set_result, req.future, res)


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
