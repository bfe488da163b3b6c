"""Prometheus text-format metrics for ``bgem3 serve`` (no client library needed).

Exposed at ``GET /metrics``: queue depth, in-flight requests, batch sizes, tokens and
texts encoded (so ``rate(bgem3_tokens_total[1m])`` is tokens/s), request latency and
batch duration histograms, and refusal / error counters by reason.

Example::

    >>> m = Metrics()
    >>> m.observe_batch(texts=8, tokens=120, seconds=0.01)
    >>> m.observe_request("/embed", 200, 0.02)
    >>> "bgem3_batch_size_bucket" in m.render(queue_texts=0, queue_tokens=0, in_flight=0)
    True
"""

from __future__ import annotations

import threading
from typing import Sequence

__all__ = ["Histogram", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative-bucket histogram, as Prometheus wants it."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, acc = [], 0
        sep = "," if labels else ""
        for b, c in zip(self.buckets, self.counts):
            acc += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {acc}')
        acc += self.counts[-1]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {acc}')
        lab = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{lab} {self.sum:.6f}")
        out.append(f"{name}_count{lab} {self.count}")
        return out


class Metrics:
    """Counters and histograms, updated by the batcher thread and the app."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)
        self.latency: dict[str, Histogram] = {}
        self.requests: dict[tuple[str, int], int] = {}
        self.tokens = 0
        self.texts = 0
        self.batches = 0
        self.rejected = 0
        self.cancelled = 0
        self.failed_batches = 0
        self.queue_texts = 0

    def observe_batch(self, texts: int, tokens: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(texts)
            self.batch_seconds.observe(seconds)
            self.tokens += tokens
            self.texts += texts
            self.batches += 1

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def render(self, *, queue_texts: int, queue_tokens: int, in_flight: int) -> str:
        """The ``text/plain; version=0.0.4`` exposition."""
        with self._lock:
            lines = [
                "# HELP bgem3_queue_texts Texts waiting for a forward pass.", "# TYPE bgem3_queue_texts gauge",
                f"bgem3_queue_texts {queue_texts}",
                "# HELP bgem3_queue_tokens Tokens waiting for a forward pass.", "# TYPE bgem3_queue_tokens gauge",
                f"bgem3_queue_tokens {queue_tokens}",
                "# HELP bgem3_in_flight_requests Requests queued or being computed.",
                "# TYPE bgem3_in_flight_requests gauge", f"bgem3_in_flight_requests {in_flight}",
                "# HELP bgem3_tokens_total Tokens encoded.", "# TYPE bgem3_tokens_total counter",
                f"bgem3_tokens_total {self.tokens}",
                "# HELP bgem3_texts_total Texts encoded.", "# TYPE bgem3_texts_total counter",
                f"bgem3_texts_total {self.texts}",
                "# HELP bgem3_batches_total Forward passes run.", "# TYPE bgem3_batches_total counter",
                f"bgem3_batches_total {self.batches}",
                "# HELP bgem3_rejected_total Requests refused because the queue was full (429).",
                "# TYPE bgem3_rejected_total counter", f"bgem3_rejected_total {self.rejected}",
                "# HELP bgem3_cancelled_total Requests abandoned (client gone or timeout) before completion.",
                "# TYPE bgem3_cancelled_total counter", f"bgem3_cancelled_total {self.cancelled}",
                "# HELP bgem3_failed_batches_total Forward passes that raised.",
                "# TYPE bgem3_failed_batches_total counter", f"bgem3_failed_batches_total {self.failed_batches}",
                "# HELP bgem3_batch_size Texts per forward pass.", "# TYPE bgem3_batch_size histogram",
                *self.batch_size.lines("bgem3_batch_size"),
                "# HELP bgem3_batch_seconds Duration of one forward pass.", "# TYPE bgem3_batch_seconds histogram",
                *self.batch_seconds.lines("bgem3_batch_seconds"),
                "# HELP bgem3_requests_total HTTP requests by route and status.",
                "# TYPE bgem3_requests_total counter",
            ]
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'bgem3_requests_total{{route="{route}",status="{status}"}} {n}')
            lines += ["# HELP bgem3_request_seconds Request latency, from arrival to response.",
                      "# TYPE bgem3_request_seconds histogram"]
            for route, h in sorted(self.latency.items()):
                lines += h.lines("bgem3_request_seconds", f'route="{route}"')
        return "\n".join(lines) + "\n"
