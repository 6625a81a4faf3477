"""Prometheus metrics of one server, in a registry of its own (two apps in a process never clash).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms):

- ``pal_serve_requests_total{route, task, status}``: answered requests (every status, 2xx to 5xx);
- ``pal_serve_request_seconds{route, task}``: latency from arrival to answer;
- ``pal_serve_batch_rows`` / ``pal_serve_batch_tokens``: rows and padded tokens per forward;
- ``pal_serve_batch_requests``: requests per forward; ``pal_serve_batch_failures_total``;
- ``pal_serve_queue_depth``: requests waiting for the model; ``pal_serve_tasks_loaded``.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class ServeMetrics:
    """The server's counters, gauges and histograms; ``render()`` is the ``/metrics`` body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pal_serve_requests", "Answered requests", ["route", "task", "status"], registry=r)
        self.latency = Histogram("pal_serve_request_seconds", "Request latency from arrival to answer",
                                 ["route", "task"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("pal_serve_batch_rows", "Rows per forward (QA windows count one each)",
                                    buckets=ROW_BUCKETS, registry=r)
        self.batch_tokens = Histogram("pal_serve_batch_tokens", "Padded tokens per forward",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_requests = Histogram("pal_serve_batch_requests", "Requests per forward",
                                        buckets=ROW_BUCKETS, registry=r)
        self.batch_failures = Counter("pal_serve_batch_failures", "Forwards that raised", registry=r)
        self.queue_depth = Gauge("pal_serve_queue_depth", "Requests waiting for the model", registry=r)
        self.tasks_loaded = Gauge("pal_serve_tasks_loaded", "Tasks the model serves", registry=r)

    def observe_request(self, route: str, task: str, status: int, seconds: float) -> None:
        self.requests.labels(route, task, str(status)).inc()
        self.latency.labels(route, task).observe(seconds)

    def observe_batch(self, rows: int, tokens: int, requests: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_tokens.observe(tokens)
        self.batch_requests.observe(requests)

    def render(self) -> bytes:
        return generate_latest(self.registry)
