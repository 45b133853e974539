"""Prometheus metrics shared by both transports, exported on the service's `/metrics`.

BentoML runs prometheus_client in multi-process mode, so these metrics are written to its shared
directory and appear in its `/metrics` output with its own; the gauges aggregate over live processes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ditserve.request import GenerationResult
from ditserve.scheduler import SchedulerHooks


class ServerMetrics(SchedulerHooks):
    """Requests by transport and outcome, the queue, batches, steps and block evaluations."""

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
            "ditserve_block_evaluations", "Transformer blocks computed by finished batches", registry=r
        )
        self.skipped = Counter(
            "ditserve_block_evaluations_skipped",
            "Transformer blocks that caching skipped in finished batches",
            registry=r,
        )
        self.engine_blocks = Gauge(
            "ditserve_engine_block_evaluations",
            "Blocks the engine has computed since start, cancelled work included (live counter)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._block_count = block_count or (lambda: 0)

    def queue_depth(self, depth: int) -> None:
        self.depth.set(depth)

    def batch_started(self, images: int, padded: int, waits: list[float]) -> None:
        self.batch.observe(images)
        for wait in waits:
            self.wait.observe(wait)

    def step_done(self, seconds: float) -> None:
        self.step.observe(seconds)
        self.engine_blocks.set(self._block_count())

    def batch_done(self, result: GenerationResult) -> None:
        self.blocks.inc(result.stats.block_evaluations)
        self.skipped.inc(result.stats.blocks_skipped)
        self.engine_blocks.set(self._block_count())

    def count(self, transport: str, status: str) -> None:
        self.requests.labels(transport, status).inc()
