"""Continuous (step-level) batching: the batch of one model call is formed again at every step boundary.

Each admitted request runs its own sampler's loop (`Sampler.sample`) on a thread of its own, whose `denoise`
hands its (x, t) to the step loop and waits. The loop waits until every running request has handed over a
call or finished, runs one transformer call for all of them (the family adapters take one timestep per
sample), and hands each its rows back. At that boundary it answers the requests that finished, drops those
cancelled or past their deadline, and the scheduler admits new ones with their own step count, guidance,
sampler and seeds. A thread per request, rather than a step-wise sampler interface, keeps every sampler's
loop as it is (multistep solvers, Heun's two calls per step) and costs two hand-offs per step.

Between two calls the requests' samplers run one at a time: each holds the loop's baton from its answer to
its next hand-over. Run all at once, 16 sampler threads took the GIL from each other at every torch op of
their steps (each op lets the GIL go), and a 16-image step cost 10 % more than the same step in
`Engine.generate_batch`. The last request to hand over wakes the loop; the others wake nobody.

The sampler threads are kept and reused (`SamplerThreads`): a thread started for each request ran its request
8–10 % slower than a thread that had run one before (fresh per-thread allocator arena and pages; measured on
`Engine.generate_batch` of a 10-step request, alternated, on the 2-core CPU), which made a lone request 1.13×
the unbatched server's time.

Requests with different LoRA adapters (`ditserve.lora`) run side by side, but never in one call: at each
boundary the loop makes one call per adapter among the running requests, switching the active adapter before
each (a flag and a scale per layer, no weights move).

Only requests whose strategies declare `mixes_in_batch` run here (`mixing_problem`): a sampler whose runs
share state on its instance, or a cache that decides for a whole model call, would see other requests'
steps. The scheduler runs those in static batches of their own plan.

Reproducibility: rows of one model call never mix, but the call's row count changes how the matrix products
round in the last bits, so an image can differ from the same request served alone by ~1e-6. With `pad_rows`
every call is padded to that fixed row count with copies of its first row, so an image's pixels depend only
on its own request, whatever its batch-mates (the price: every call costs a full batch).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import torch

from ditserve.engine import Engine, Job
from ditserve.request import GenerationResult, GenerationStats, ProgressEvent


class SamplerThreads:
    """Daemon threads that run one request's sampler after another: a thread whose request finished waits for
    the next; a new thread starts only when none is free (so there are as many as requests ever ran at once)."""

    def __init__(self) -> None:
        self._free: queue.SimpleQueue[queue.SimpleQueue] = queue.SimpleQueue()

    def run(self, task: Callable[[], None]) -> None:
        try:
            inbox = self._free.get_nowait()
        except queue.Empty:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name="ditserve-sampler", daemon=True).start()
        inbox.put(task)

    def _serve(self, inbox: queue.SimpleQueue) -> None:
        while True:
            inbox.get()()  # the task catches everything it raises (Trajectory._sample)
            self._free.put(inbox)


def mixing_problem(engine: Engine, job: Job) -> str | None:
    """Why `job` cannot share model calls with requests at other steps, or None when it can."""
    if job.cache is not None:
        return f"its cache override {job.cache.name!r} is swapped into the model for a batch of its own"
    if not engine.cache.mixes_in_batch:
        return f"cache {engine.cache.name!r} decides for a whole model call, not per sample"
    if not job.sampler.mixes_in_batch:
        return f"sampler {job.sampler.name!r} does not run beside other requests' steps (`Sampler.mixes_in_batch`)"
    return None


class Trajectory:
    """One request running through its own sampler on its own thread, one model call at a time."""

    def __init__(self, engine: Engine, job: Job, ticket, loop: StepLoop) -> None:
        self.job = job
        self.ticket = ticket
        """Whatever the caller tracks the request by (the scheduler's `Ticket`)."""
        self.started = time.perf_counter()
        self.inputs = engine.start_inputs([job])
        self.stats = GenerationStats(
            resumed_from=self.inputs.resumed_from, seconds={"condition": time.perf_counter() - self.started}
        )
        self.call: tuple[torch.Tensor, torch.Tensor] | None = None
        """The (x, t) this request waits to have evaluated; None while its sampler computes."""
        self.done = False
        self.latents: torch.Tensor | None = None
        self.error: BaseException | None = None
        self._output: torch.Tensor | None = None
        self._abort: BaseException | None = None
        self._loop, self._answered = loop, threading.Event()
        loop.threads.run(self._sample)

    @property
    def images(self) -> int:
        return len(self.job.seeds)

    @property
    def waiting(self) -> bool:
        """Handed over a call, or finished: the step loop may go on (read under the board's lock)."""
        return self.done or self.call is not None

    def answer(self, output: torch.Tensor) -> None:
        """Hand the model's output for the waiting call back to the sampler."""
        self.call, self._output = None, output
        self._answered.set()

    def stop(self, reason: BaseException) -> None:
        """End the sampler's loop: its waiting `denoise` raises `reason`."""
        self.call, self._abort = None, reason
        self._answered.set()

    def _sample(self) -> None:
        job, inputs = self.job, self.inputs
        self._loop.baton.acquire()
        try:
            with torch.inference_mode():  # grad mode is per thread
                denoise, on_step = inputs.loop(self._denoise, self._step_done)  # an edit answers its skipped steps
                self.latents = job.sampler.sample(
                    denoise, inputs.noise, job.steps, inputs.generators, on_step, inputs.schedule
                )
        except BaseException as err:  # answered by the step loop; nothing may escape a worker thread
            self.error = err
        self._hand_over(None)

    def _denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._hand_over((x, t))
        self._answered.wait()
        self._answered.clear()
        self._loop.baton.acquire()
        if self._abort is not None:
            raise self._abort
        output, self._output = self._output, None
        return output

    def _hand_over(self, call: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Wait for the model with `call`, or finish (None): wake the loop if every running request now waits,
        and let the next sampler run."""
        loop = self._loop
        with loop.board:
            if call is None:
                self.done = True
            else:
                self.call = call
            if all(trajectory.waiting for trajectory in loop.running):
                loop.board.notify()
        loop.baton.release()

    def _step_done(self, done: int, total: int, x: torch.Tensor) -> None:
        self.stats.steps = done
        self._loop.on_step(self, ProgressEvent(done, total, time.perf_counter() - self.started, x))


class StepLoop:
    """The running requests of one engine and their shared model calls, one step boundary at a time.

    The scheduler's worker thread drives it: `admit` at a boundary, then `step` (which answers the requests
    that finished or stopped and runs the next call). `finish(trajectory)` is called once per request that
    leaves; `stopping(trajectory)` says why a running one must stop now (cancelled, deadline), or None."""

    def __init__(
        self,
        engine: Engine,
        pad_rows: int,
        on_step: Callable[[Trajectory, ProgressEvent], None],
        finish: Callable[[Trajectory], None],
        stopping: Callable[[Trajectory], BaseException | None],
    ) -> None:
        self.engine, self.pad_rows = engine, pad_rows
        self.running: list[Trajectory] = []
        """Changed under `board`, which the requests' threads read it under."""
        self.on_step, self._finish, self._stopping = on_step, finish, stopping
        self.board = threading.Condition()
        """Where the loop waits for the last running request to hand over."""
        self.baton = threading.Lock()
        """Held by the one sampler that runs between two calls."""
        self.threads = SamplerThreads()

    @property
    def images(self) -> int:
        return sum(trajectory.images for trajectory in self.running)

    def admit(self, job: Job, ticket) -> Trajectory:
        """Start `job` running (`ticket` is the caller's handle on it); its first call joins the loop's next."""
        trajectory = Trajectory(self.engine, job, ticket, self)
        with self.board:
            self.running.append(trajectory)
        return trajectory

    def step(self) -> tuple[int, int, int, int]:
        """Let every running request reach the boundary, answer those that left, run the model for the rest: one
        call per LoRA adapter among them (requests with different adapters never share a call), in the order
        their first requests came. Returns the calls' images, padding rows, blocks computed and the number of
        calls that ran (a failed call ran none). Once no request runs, every adapter is switched off again."""
        self._settle()
        for trajectory in [t for t in self.running if t.done]:
            with self.board:
                self.running.remove(trajectory)
            self._finish(trajectory)
        if not self.running:
            self.engine.loras.activate(None)
            return 0, 0, 0, 0
        groups: dict[tuple[str, float] | None, list[Trajectory]] = {}
        for trajectory in self.running:
            groups.setdefault(trajectory.job.lora, []).append(trajectory)
        totals = [0, 0, 0, 0]
        for group in groups.values():
            images, padding, blocks = self._call(group)
            for k, value in enumerate((images, padding, blocks, int(images > 0))):
                totals[k] += value
        return totals[0], totals[1], totals[2], totals[3]

    def result(self, trajectory: Trajectory) -> GenerationResult:
        """The images of a request that finished, with what its calls cost."""
        stats, engine = trajectory.stats, self.engine
        decode_started = time.perf_counter()
        images = engine.to_images(trajectory.latents, trajectory.inputs.edit)
        stats.seconds["decode"] = time.perf_counter() - decode_started
        stats.block_evaluations_full = stats.model_evaluations * engine.blocks_per_call
        stats.attention_evaluations_full = stats.model_evaluations * engine.attention_layers_per_call
        stats.token_evaluations_full = stats.token_evaluations  # a cache that mixes in a batch reuses no tokens
        stats.seconds["total"] = time.perf_counter() - trajectory.started
        job = trajectory.job
        return GenerationResult.of(images, job.seeds, stats, job.subject)

    def _settle(self) -> None:
        """Wait until every running request waits for a call or finished; stop those that must stop."""
        with self.board:
            while True:
                self.board.wait_for(lambda: all(t.waiting for t in self.running))
                stopped = False
                for trajectory in self.running:
                    reason = None if trajectory.done else self._stopping(trajectory)
                    if reason is not None:
                        trajectory.stop(reason)
                        stopped = True
                if not stopped:
                    return

    def _call(self, group: list[Trajectory]) -> tuple[int, int, int]:
        """One transformer call over every row of `group`'s waiting calls; each request gets its own guided
        output back. A call that fails fails the requests in it; the next call starts clean."""
        engine = self.engine
        blocks = engine.block_counter.count
        attention = engine.attention_counter.count
        tokens = engine.token_counter.count if engine.token_counter is not None else 0
        try:
            outputs, padding = self._evaluate(group)
        except Exception as err:
            for trajectory in group:
                trajectory.stop(err)
            return 0, 0, 0
        blocks = engine.block_counter.count - blocks
        attention = engine.attention_counter.count - attention
        tokens = engine.token_counter.count - tokens if engine.token_counter is not None else 0
        images = sum(trajectory.images for trajectory in group)
        for trajectory, output in zip(group, outputs, strict=True):
            stats = trajectory.stats
            stats.model_evaluations += 1
            stats.timestep_evaluations += 1
            stats.block_evaluations += blocks
            stats.attention_evaluations += attention
            stats.token_evaluations += tokens
            stats.batch_size = max(stats.batch_size, images)
            trajectory.answer(output)
        return images, padding, blocks

    def _evaluate(self, group: list[Trajectory]) -> tuple[list[torch.Tensor], int]:
        """The model's output for each request's waiting call (its conditional rows, then its unconditional
        ones when guided, each at the request's own timestep), and the padding rows the call carried."""
        xs, ts, rows, inputs = [], [], [], {}
        for trajectory in group:
            x, t = trajectory.call
            t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
            if trajectory.inputs.use_cfg:
                x, t = torch.cat([x, x]), torch.cat([t, t])
            xs.append(x)
            ts.append(t)
            rows.append(x.shape[0])
            for key, value in trajectory.inputs.kwargs.items():
                inputs.setdefault(key, []).append(value)
        padding = max(0, self.pad_rows - sum(rows))
        if padding:
            xs.append(xs[0][:1].expand(padding, *xs[0].shape[1:]))
            ts.append(ts[0][:1].expand(padding))
            for values in inputs.values():
                values.append(values[0][:1].expand(padding, *values[0].shape[1:]))
        kwargs = {key: torch.cat(values) for key, values in inputs.items()}
        self.engine.loras.activate(group[0].job.lora)
        out = self.engine.adapter.predict(self.engine.model, torch.cat(xs), torch.cat(ts), kwargs)
        outputs = []
        for trajectory, output in zip(group, out[: sum(rows)].split(rows), strict=True):
            if trajectory.inputs.use_cfg:
                cond, uncond = output.chunk(2)
                output = uncond + trajectory.job.guidance * (cond - uncond)
            outputs.append(output)
        return outputs, padding
