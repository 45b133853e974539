"""The scheduler: one bounded queue in front of one engine, shared by every transport.

Requests are validated when they are submitted (so a bad one costs no model work and never waits),
admitted only while fewer than `max_queue` are waiting or running (else `QueueFull`, which
transports turn into 429 / RESOURCE_EXHAUSTED), and run by one worker thread.

Continuous batching (`limits.batching`, the default, on a local `Engine`): the worker drives the step loop
(`ditserve.continuous`). At every step boundary queued requests join the running batch up to `batch_images`
images, with their own steps, guidance, sampler and seeds, and finished ones are answered at once; a lone
request starts at once and pays for no batch-mates. Requests whose cache or sampler cannot share a call with
other steps (`continuous.mixing_problem`) run statically: when the oldest queued request is such, no request
joins the running batch past it, and it runs once that batch has drained.

LoRA adapters (`ditserve.lora`) are grouped like plans: a static batch holds one adapter (it is part of
`Job.batch_key`), and the step loop makes one call per adapter at each boundary.

Static batching packs compatible requests (same `Job.batch_key`: steps, size, guidance, sampler, adapter) into one
model call of at most `batch_images` images that runs to its end. It waits for company up to `batch_wait_ms`
after the last request that joined, up to `batch_wait_max_ms` in all: a fixed window from the first request
missed the clients that the previous batch had just answered whenever their answers and new requests took
longer than the window (on a 2-core CPU the batches at 16 clients held 8 to 11 images instead of 16).

Bit-identity: CPU and GPU matrix products round differently for different batch shapes, so an image computed
next to others can differ in the last bits from the same image computed alone. With `pad_batches` every model
call has a fixed shape (continuous: 2 × `batch_images` rows; static: `batch_images` images), so every image
of an admitted request runs through the same shapes whatever its batch-mates are; its pixels depend only on
its own request and seed (rows of a fixed-shape product do not mix). The price is compute when the server is
not full; benchmarks/serving.py measures it.

Cancellation: each ticket has its own cancel flag and deadline. At every step boundary the worker resolves
tickets whose client gave up (their callers get `Cancelled` at once): in a continuous batch the others go on;
a static batch's model call stops when no ticket in it still wants it — within one step.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace

import torch

from ditserve.config import ServeLimits
from ditserve.continuous import StepLoop, Trajectory, mixing_problem
from ditserve.engine import Engine, Front, Job
from ditserve.errors import Cancelled
from ditserve.request import GenerationRequest, GenerationResult, ProgressEvent

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The server already holds `max_queue` requests; retry later."""


class ShuttingDown(RuntimeError):
    """The server is draining for shutdown and takes no new requests."""


@dataclass
class Update:
    """Progress of one ticket: after `step` of `total`; `previews` are its images so far, in [0, 1]."""

    step: int
    total: int
    elapsed: float
    previews: torch.Tensor | None = None


@dataclass(eq=False)
class Ticket:
    """One admitted request: its validated job, its deadline and cancel flag, and the future of its result."""

    request: GenerationRequest
    job: Job
    deadline: float | None
    """`time.monotonic()` after which the request is cancelled."""
    on_progress: Callable[[Update], None] | None = None
    preview_every: int = 0
    """Attach previews to every k-th step's update (0: never)."""
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    finished: bool = False
    """Set once, under the scheduler's lock, when the ticket leaves the admitted count."""
    mixes: bool = False
    """Whether it may join a continuous batch (`continuous.mixing_problem`)."""

    @property
    def images(self) -> int:
        return len(self.job.seeds)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    def result(self, timeout: float | None = None) -> GenerationResult:
        return self.future.result(timeout)


class SchedulerHooks:
    """What the scheduler reports (metrics override these); the base does nothing."""

    def queue_depth(self, depth: int) -> None: ...

    def batch_started(self, images: int, padded: int, waits: list[float]) -> None: ...

    def step_done(self, seconds: float) -> None: ...

    def blocks_done(self, computed: int, full: int) -> None:
        """Transformer blocks computed by finished model work, and those the same calls would compute uncached."""


class _GuardedHooks(SchedulerHooks):
    """Forwards to the configured hooks and logs what they raise: the hooks feed metrics, and a metrics write that
    fails (prometheus' multi-process files live on a disk that can fill or be cleaned) must not kill the worker
    thread, which would leave every admitted request waiting forever."""

    def __init__(self, hooks: SchedulerHooks) -> None:
        self._hooks = hooks

    def _call(self, name: str, *args) -> None:
        try:
            getattr(self._hooks, name)(*args)
        except Exception:
            log.exception("scheduler hook %s failed", name)

    def queue_depth(self, depth: int) -> None:
        self._call("queue_depth", depth)

    def batch_started(self, images: int, padded: int, waits: list[float]) -> None:
        self._call("batch_started", images, padded, waits)

    def step_done(self, seconds: float) -> None:
        self._call("step_done", seconds)

    def blocks_done(self, computed: int, full: int) -> None:
        self._call("blocks_done", computed, full)


class _BatchCancel:
    """The engine's cancel flag for a batch: set once no ticket in it still wants the result."""

    def __init__(self, live: dict[Ticket, bool]) -> None:
        self._live = live

    def is_set(self) -> bool:
        return not any(self._live.values())


class Scheduler:
    """Admits, batches and runs requests on one engine, one batch at a time, on its own thread."""

    def __init__(self, engine: Front, limits: ServeLimits | None = None, hooks: SchedulerHooks | None = None) -> None:
        self.engine = engine
        self.limits = limits or engine.config.limits
        self.hooks = _GuardedHooks(hooks or SchedulerHooks())
        self._queue: collections.deque[Ticket] = collections.deque()
        self._admitted = 0
        self._cond = threading.Condition()
        self._closing = False
        self._steps = self._step_loop()
        self._thread = threading.Thread(target=self._work, name="ditserve-scheduler", daemon=True)
        self._thread.start()

    @property
    def admitted(self) -> int:
        """Requests waiting or running."""
        return self._admitted

    def submit(
        self,
        request: GenerationRequest,
        *,
        timeout_s: float | None = None,
        on_progress: Callable[[Update], None] | None = None,
        preview_every: int = 0,
        deadline: bool = True,
    ) -> Ticket:
        """Validate and admit a request; raises `RequestError`, `QueueFull` or `ShuttingDown`.

        The deadline is the earlier of `timeout_s` from now and the model's `limits.timeout_s`;
        `deadline=False` (the server's own warm-up) has none, so a slow machine still becomes ready.
        """
        job = self.engine.validate(request)
        if request.seed is None:  # fix the drawn seed, so the result names the seeds that made it
            request = request.model_copy(update={"seed": job.seeds[0]})
        limit = self.limits.timeout_s if timeout_s is None else min(timeout_s, self.limits.timeout_s)
        expires = time.monotonic() + limit if deadline else None
        ticket = Ticket(request, job, expires, on_progress, max(0, preview_every))
        ticket.mixes = self._steps is not None and mixing_problem(self.engine, job) is None
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new requests; retry on another replica")
            if self._admitted >= self.limits.max_queue:
                raise QueueFull(f"the queue is full ({self.limits.max_queue} requests waiting or running); retry later")
            self._admitted += 1
            self._queue.append(ticket)
            self.hooks.queue_depth(len(self._queue))
            self._cond.notify_all()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Stop a ticket: at once if it still waits, at the next step boundary if it runs."""
        ticket.cancelled.set()
        with self._cond:
            if ticket in self._queue:
                self._queue.remove(ticket)
                self._finish(ticket, exception=Cancelled(0, "cancelled"))
                self.hooks.queue_depth(len(self._queue))

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new requests, let admitted ones finish, stop the worker; True if it drained in time."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def closing(self) -> bool:
        return self._closing

    # -- the worker ------------------------------------------------------------------------------

    def _finish(self, ticket: Ticket, result: GenerationResult | None = None, exception: BaseException | None = None):
        """Resolve a ticket once (caller holds no engine lock; the admitted count drops here).

        The count follows `ticket.finished`, not the future: a caller may cancel the future itself (asyncio's
        `wrap_future` does when the awaiting task is cancelled), and that request still held a place."""
        with self._cond:
            if ticket.finished:
                return
            ticket.finished = True
            self._admitted -= 1
        try:
            if exception is not None:
                ticket.future.set_exception(exception)
            else:
                ticket.future.set_result(result)
        except InvalidStateError:  # the caller cancelled the future: nobody waits for the outcome
            pass

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if self._closing:
                        return
                    self._cond.wait()
                mixes = self._queue[0].mixes
            if mixes:
                self._run_steps()
            else:
                self._run(self._next_batch())

    def _next_batch(self) -> list[Ticket]:
        """The oldest ticket plus compatible ones, up to `batch_images`; waits `batch_wait_ms` after the last one
        that joined, `batch_wait_max_ms` at most."""
        cap, gap = self.limits.batch_images, self.limits.batch_wait_ms / 1000
        with self._cond:
            first = self._queue.popleft()
            batch, images = [first], first.images
            now = time.monotonic()
            last_call = now + max(self.limits.batch_wait_ms, self.limits.batch_wait_max_ms) / 1000
            until = min(now + gap, last_call)
            while images < cap:
                joined = False
                for ticket in list(self._queue):
                    if ticket.job.batch_key == first.job.batch_key and images + ticket.images <= cap:
                        self._queue.remove(ticket)
                        batch.append(ticket)
                        images += ticket.images
                        joined = True
                now = time.monotonic()
                if joined:
                    until = min(now + gap, last_call)
                left = until - now
                if images >= cap or left <= 0 or self._closing:
                    break
                self._cond.wait(left)
            self.hooks.queue_depth(len(self._queue))
        return batch

    def _fillers(self, batch: list[Ticket]) -> list[GenerationRequest]:
        """Requests that pad the batch to exactly `batch_images` images (their images are discarded)."""
        cap, images = self.limits.batch_images, sum(t.images for t in batch)
        if not self.limits.pad_batches or images >= cap:
            return []
        fillers, missing = [], cap - images
        while missing:
            n = min(missing, self.limits.max_batch)
            fillers.append(batch[0].request.model_copy(update={"num_images": n, "seed": 0}))
            missing -= n
        return fillers

    def _run(self, batch: list[Ticket]) -> None:
        now = time.monotonic()
        live = {}
        for ticket in batch:
            if ticket.cancelled.is_set() or ticket.expired(now):
                reason = "cancelled" if ticket.cancelled.is_set() else "deadline exceeded"
                self._finish(ticket, exception=Cancelled(0, reason))
            else:
                live[ticket] = True
        if not live:
            return
        batch = list(live)
        fillers = self._fillers(batch)
        self.hooks.batch_started(sum(t.images for t in batch), len(fillers), [now - t.submitted for t in batch])
        offsets, start = {}, 0
        for ticket in batch:
            offsets[ticket] = (start, start + ticket.images)
            start += ticket.images
        last = [time.perf_counter()]

        def on_progress(event: ProgressEvent) -> None:
            tick = time.perf_counter()
            self.hooks.step_done(tick - last[0])
            last[0] = tick
            now = time.monotonic()
            for ticket in batch:
                if not live[ticket]:
                    continue
                if ticket.cancelled.is_set() or ticket.expired(now):
                    live[ticket] = False
                    reason = "cancelled" if ticket.cancelled.is_set() else "deadline exceeded"
                    self._finish(ticket, exception=Cancelled(event.step, reason))
                elif ticket.on_progress is not None:
                    self._report(ticket, event, offsets[ticket])

        try:
            results = self.engine.generate_batch(
                [t.request for t in batch] + fillers, on_progress=on_progress, cancel=_BatchCancel(live)
            )
        except Cancelled as err:
            for ticket in batch:
                self._finish(ticket, exception=err)
            return
        except Exception as err:  # one failed batch fails its requests only; the engine has reset its state
            log.exception("batch of %d requests failed", len(batch))
            for ticket in batch:
                self._finish(ticket, exception=err)
            return
        self.hooks.blocks_done(results[0].stats.block_evaluations, results[0].stats.block_evaluations_full)
        for ticket, result in zip(batch, results, strict=False):
            stats = replace(result.stats, seconds={**result.stats.seconds, "queue": now - ticket.submitted})
            self._finish(ticket, replace(result, stats=stats))

    # -- continuous batching ----------------------------------------------------------------------

    def _step_loop(self) -> StepLoop | None:
        """The step loop of continuous batching, on a local engine (a multi-process executor batches statically)."""
        if self.limits.batching != "continuous" or not isinstance(self.engine, Engine):
            return None
        pad_rows = 2 * self.limits.batch_images if self.limits.pad_batches else 0
        return StepLoop(self.engine, pad_rows, self._step_progress, self._leave, self._must_stop)

    def _run_steps(self) -> None:
        """Run the step loop until its batch is empty, admitting queued requests at every step boundary."""
        loop = self._steps
        with torch.inference_mode():
            while True:
                joined = self._joiners(loop.images, loop.running[0].ticket if loop.running else None)
                now = time.monotonic()
                for ticket in joined:
                    reason = self._gone(ticket, now)
                    if reason is not None:
                        self._finish(ticket, exception=Cancelled(0, reason))
                        continue
                    try:
                        trajectory = loop.admit(ticket.job, ticket)
                    except Exception as err:  # e.g. conditioning failed: this request fails, the batch goes on
                        log.exception("admitting a request failed")
                        self._finish(ticket, exception=err)
                        continue
                    trajectory.stats.seconds["queue"] = now - ticket.submitted
                if not loop.running:
                    return
                started = time.perf_counter()
                images, padding, blocks, calls = loop.step()
                if images:
                    self.hooks.batch_started(images, padding, [now - t.submitted for t in joined])
                    self.hooks.step_done(time.perf_counter() - started)
                    self.hooks.blocks_done(blocks, calls * self.engine.blocks_per_call)

    def _joiners(self, running_images: int, running: Ticket | None) -> list[Ticket]:
        """Queued tickets that join the continuous batch now, oldest first: while they fit in `batch_images`
        (the first into an empty batch always), have the running batch's image size (and frames: videos), and none
        older is waiting for a static batch."""
        room = self.limits.batch_images - running_images
        shape = None if running is None else running.job.latent_shape(self.engine.model)
        joined = []
        with self._cond:
            while self._queue and self._queue[0].mixes:
                ticket = self._queue[0]
                fits = ticket.images <= room or (running is None and not joined)
                if not fits or (shape is not None and ticket.job.latent_shape(self.engine.model) != shape):
                    break
                shape = ticket.job.latent_shape(self.engine.model)
                joined.append(self._queue.popleft())
                room -= ticket.images
            if joined:
                self.hooks.queue_depth(len(self._queue))
        return joined

    @staticmethod
    def _gone(ticket: Ticket, now: float) -> str | None:
        """Why a ticket's client no longer wants its result, or None."""
        if ticket.cancelled.is_set():
            return "cancelled"
        return "deadline exceeded" if ticket.expired(now) else None

    def _must_stop(self, trajectory: Trajectory) -> BaseException | None:
        reason = self._gone(trajectory.ticket, time.monotonic())
        return None if reason is None else Cancelled(trajectory.stats.steps, reason)

    def _step_progress(self, trajectory: Trajectory, event: ProgressEvent) -> None:
        """After each of a request's steps (on its sampler's thread): report it, or stop it if it is gone."""
        ticket = trajectory.ticket
        reason = self._gone(ticket, time.monotonic())
        if reason is not None:
            raise Cancelled(event.step, reason)
        if ticket.on_progress is not None:
            self._report(ticket, event, (0, ticket.images))

    def _leave(self, trajectory: Trajectory) -> None:
        """Answer a request that left the continuous batch: finished, stopped or failed."""
        ticket = trajectory.ticket
        if trajectory.error is not None:
            if not isinstance(trajectory.error, Cancelled):
                log.error("a request in a continuous batch failed", exc_info=trajectory.error)
            self._finish(ticket, exception=trajectory.error)
            return
        try:
            result = self._steps.result(trajectory)
        except Exception as err:
            log.exception("decoding a finished request failed")
            self._finish(ticket, exception=err)
            return
        self._finish(ticket, result)

    def _report(self, ticket: Ticket, event: ProgressEvent, span: tuple[int, int]) -> None:
        previews = None
        k = ticket.preview_every
        if k and (event.step % k == 0 or event.step == event.total):
            engine = self.engine
            latents = event.latents[span[0] : span[1]]
            previews = ((engine.adapter.decode(engine.model, latents) + 1) / 2).clamp(0, 1).cpu()
        try:
            ticket.on_progress(Update(event.step, event.total, event.elapsed, previews))
        except Exception:  # a broken listener must not stop the batch
            log.exception("progress listener failed")
