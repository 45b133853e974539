"""Prometheus metrics shared by both transports, exported on the service's `/metrics`.

Every label has a bounded set of values: transports, outcomes, route templates (`/tasks/{id}`, never a
raw path or an id), methods and status codes. BentoML's own HTTP metrics label raw paths, so a client
could grow them without bound; the service turns them off and `RouteMetrics` counts every HTTP request
here instead. BentoML runs prometheus_client in multi-process mode (`PROMETHEUS_MULTIPROC_DIR`), so the
metrics are written to its shared directory and `exposition` reads them from there; the gauges
aggregate over live processes.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""HTTP methods that get their own label value; any other is counted as "other"."""


class ServerMetrics:
    """Requests by transport and outcome, HTTP requests by route, the queue, batches, steps and blocks.

    The scheduler reports to it through the `SchedulerHooks` methods (queue_depth ... blocks_done)."""

    def __init__(self, block_count=None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ditserve_requests", "Requests answered, by transport and outcome", ["transport", "status"], registry=r
        )
        self.depth = Gauge(
            "ditserve_queue_depth", "Requests waiting for a batch", registry=r, multiprocess_mode="livesum"
        )
        self.wait = Histogram(
            "ditserve_queue_wait_seconds",
            "Time from admission to the start of its batch",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60),
        )
        self.batch = Histogram(
            "ditserve_batch_images",
            "Request images per batched model call (fillers excluded)",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.step = Histogram(
            "ditserve_step_seconds",
            "Wall time of one denoising step of a batch",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
        )
        self.blocks = Counter(
            "ditserve_block_evaluations", "Transformer blocks computed by finished model work", registry=r
        )
        self.skipped = Counter(
            "ditserve_block_evaluations_skipped",
            "Transformer blocks that caching skipped in finished model work",
            registry=r,
        )
        self.engine_blocks = Gauge(
            "ditserve_engine_block_evaluations",
            "Blocks the engine has computed since start, cancelled work included (live counter)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.http_requests = Counter(
            "ditserve_http_requests",
            "HTTP requests answered, by route template, method and status code",
            ["route", "method", "code"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "ditserve_http_request_duration_seconds",
            "Time from an HTTP request's arrival to the end of its answer, by route template",
            ["route", "method"],
            registry=r,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300),
        )
        self._block_count = block_count or (lambda: 0)

    def exposition(self) -> bytes:
        """The Prometheus text of every process's metrics (this registry's alone outside multi-process mode)."""
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def http_request(self, route: str, method: str, code: int, started: float) -> None:
        method = method if method in METHODS else "other"
        self.http_requests.labels(route, method, str(code)).inc()
        self.http_seconds.labels(route, method).observe(time.perf_counter() - started)

    def queue_depth(self, depth: int) -> None:
        self.depth.set(depth)

    def batch_started(self, images: int, padded: int, waits: list[float]) -> None:
        self.batch.observe(images)
        for wait in waits:
            self.wait.observe(wait)

    def step_done(self, seconds: float) -> None:
        self.step.observe(seconds)
        self.engine_blocks.set(self._block_count())

    def blocks_done(self, computed: int, full: int) -> None:
        self.blocks.inc(computed)
        self.skipped.inc(full - computed)
        self.engine_blocks.set(self._block_count())

    def count(self, transport: str, status: str) -> None:
        self.requests.labels(transport, status).inc()
