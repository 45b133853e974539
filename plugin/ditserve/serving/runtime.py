"""What both transports share in one process: the engine, its scheduler, metrics, tasks, auth and readiness.

The engine loads and warms up on a background thread, so the HTTP and gRPC servers can answer health
checks (not ready) meanwhile; `ready` is set only after a warm-up batch ran through the scheduler.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ditserve.config import ModelConfig, load_config
from ditserve.request import GenerationRequest
from ditserve.serving.schemas import NotReady, UnknownModel, check_format

if TYPE_CHECKING:  # the scheduler loads torch: imported when the engine loads, not with the transports
    from ditserve.scheduler import Scheduler, Ticket, Update

log = logging.getLogger(__name__)

MAX_TASKS = 256
"""Finished tasks kept for `GET /tasks/{id}` before the oldest are forgotten."""


@dataclass
class Task:
    """A request submitted with `POST /tasks`, polled and cancelled by id."""

    id: str
    ticket: Ticket
    format: str
    fps: int = 8
    """What a video model's video files play at."""
    step: int = 0
    total: int = 0
    created: float = field(default_factory=time.time)

    def on_progress(self, update: Update) -> None:
        self.step, self.total = update.step, update.total

    @property
    def status(self) -> str:
        future = self.ticket.future
        if not future.done():
            return "running" if self.step else "queued"
        err = future.exception()
        if err is None:
            return "succeeded"
        return "cancelled" if type(err).__name__ == "Cancelled" else "failed"


class Runtime:
    """One served model: config, engine, scheduler, metrics, tasks; shared by REST and gRPC."""

    def __init__(
        self, config: ModelConfig, api_key: str | None = None, warmup_rounds: int = 1, executor: Callable | None = None
    ) -> None:
        self.config = config
        self.open_executor = executor
        """config → the executor that serves it (default `parallel.executor.open_executor`; torchrun's rank 0
        gives its own)."""
        self.api_key = api_key or None
        self.tenant = hashlib.sha256(self.api_key.encode()).hexdigest()[:32] if self.api_key else None
        """The key's digest, stamped on every request it admits: its scope in the cross-request cache (nirvana.py)."""
        self.warmup_rounds = warmup_rounds
        self.engine = None
        self.scheduler: Scheduler | None = None
        from ditserve.serving.metrics import ServerMetrics

        self.metrics = ServerMetrics(lambda: self.engine.block_counter.count if self.engine else 0)
        self.ready = threading.Event()
        self.draining = threading.Event()
        """Set at SIGTERM: new requests get 503 / UNAVAILABLE "shutting down" while admitted ones finish."""
        self.load_error: str | None = None
        self.tasks: collections.OrderedDict[str, Task] = collections.OrderedDict()
        self._tasks_lock = threading.Lock()
        self._on_ready: list[Callable[[], None]] = []

    @classmethod
    def from_env(cls) -> Runtime:
        """Settings the service reads from its environment (`ditserve serve` and bentofile.yaml set them)."""
        return cls(
            load_config(os.environ.get("DITSERVE_CONFIG", "builtin:digits-dit")),
            api_key=os.environ.get("DITSERVE_API_KEY"),
            warmup_rounds=int(os.environ.get("DITSERVE_WARMUP_ROUNDS", "1")),
        )

    @property
    def name(self) -> str:
        return self.config.model.name

    @property
    def alive(self) -> bool:
        """False once the engine cannot serve again (a rank of a multi-process runner died or hung): /livez,
        /readyz and gRPC health then fail, so the orchestrator restarts the service."""
        return self.engine is None or self.engine.alive

    @property
    def serving(self) -> bool:
        """Ready for requests: warmed up, not draining, and the engine alive."""
        return self.ready.is_set() and not self.draining.is_set() and self.alive

    def on_ready(self, callback: Callable[[], None]) -> None:
        self._on_ready.append(callback)

    def start(self) -> threading.Thread:
        """Load, warm up and mark ready on a background thread."""
        thread = threading.Thread(target=self._load, name="ditserve-load", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        try:
            from ditserve.parallel.executor import open_executor
            from ditserve.scheduler import Scheduler

            started = time.perf_counter()
            engine = (self.open_executor or open_executor)(self.config)
            self.engine = engine
            self.scheduler = Scheduler(engine, hooks=self.metrics)
            self._warm_up()
            self.ready.set()
            log.info("%s ready in %.1fs", self.name, time.perf_counter() - started)
            for callback in self._on_ready:
                callback()
        except Exception as err:  # the process stays up, reports not ready and says why
            self.load_error = f"{type(err).__name__}: {err}"
            log.exception("loading %s failed", self.name)

    def _warm_up(self) -> None:
        """Run `warmup_rounds` requests of the plan's steps through the scheduler (allocations, lazy initialisation,
        the step loop) before the server reports ready."""
        engine = self.engine
        subject = {"class_label": 0} if engine.adapter.conditioning == "class" else {"prompt": "warm-up"}
        for _ in range(self.warmup_rounds):
            warmup = GenerationRequest(**subject, seed=0, approx_cache=False)  # leaves nothing to start from
            self.scheduler.submit(warmup, deadline=False).result()

    # -- requests -----------------------------------------------------------------------------------

    def metrics_count(self, transport: str, status: str) -> None:
        self.metrics.count(transport, status)

    def check_key(self, given: str | None) -> bool:
        if self.api_key is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.api_key.encode())

    def submit(self, request: GenerationRequest, model: str | None = None, **options) -> Ticket:
        if model and model != self.name:
            raise UnknownModel(f"model {model!r} is not served here; this server serves {self.name!r}")
        if self.draining.is_set():  # before readiness: a draining server is not "still loading"
            from ditserve.scheduler import ShuttingDown

            raise ShuttingDown(f"the server is shutting down and takes no new requests; retry {self.name!r} elsewhere")
        if not self.ready.is_set():
            why = f"loading failed: {self.load_error}" if self.load_error else "still loading and warming up"
            raise NotReady(f"the model {self.name!r} is {why}; retry when /readyz answers 200")
        if not self.alive:
            raise NotReady(f"the engine of {self.name!r} is down (a rank died or hung); restart the service")
        return self.scheduler.submit(request.model_copy(update={"tenant": self.tenant}), **options)

    def check_format(self, fmt: str) -> None:
        """Refuse an output format the served model cannot make, before any work (once loaded: `submit` refuses
        every request until then)."""
        if self.engine is not None:
            check_format(fmt, self.engine.makes_video)

    def add_task(self, ticket: Ticket, fmt: str, fps: int = 8) -> Task:
        task = Task(secrets.token_hex(8), ticket, fmt, fps)
        ticket.on_progress = task.on_progress
        with self._tasks_lock:
            self.tasks[task.id] = task
            while len(self.tasks) > MAX_TASKS:
                oldest = next((k for k, t in self.tasks.items() if t.ticket.future.done()), None)
                if oldest is None:
                    break
                del self.tasks[oldest]
        return task

    def begin_drain(self) -> None:
        """Not ready, and refuse new requests from now on with "shutting down" (admitted ones keep running)."""
        self.draining.set()
        if self.scheduler:
            self.scheduler.close(timeout=0)

    def shutdown(self, timeout: float = 60.0) -> bool:
        """Refuse new requests and let admitted ones finish; True if they did within `timeout`."""
        self.draining.set()
        return self.scheduler.close(timeout) if self.scheduler else True

    # -- listings -----------------------------------------------------------------------------------

    def describe(self) -> dict:
        info = self.engine.describe() if self.engine else {"name": self.name, "limits": self.config.limits.model_dump()}
        return {**info, "ready": self.serving}

    def strategies(self) -> list[dict]:
        """Every registered strategy with its config fields; `active` marks this model's plan."""
        from ditserve.registry import REGISTRIES

        plan = self.config.plan
        active = {
            "sampler": plan.sampler.name,
            "cache": plan.cache.name,
            "quant": plan.quant.name,
            "parallel": plan.parallel.name,
        }
        out = []
        for kind, registry in REGISTRIES.items():
            for name, cls in registry:
                fields = [
                    {
                        "name": fname,
                        "type": str(info.annotation).replace("typing.", ""),
                        "default": None if info.is_required() else info.default,
                        "doc": info.description or "",
                    }
                    for fname, info in cls.Config.model_fields.items()
                    if fname != "name"
                ]
                out.append(
                    {
                        "kind": kind,
                        "name": name,
                        "about": cls.describe(),
                        "active": active.get(kind) == name,
                        "fields": fields,
                    }
                )
        return out
