"""The ranks of a multi-process runner: spawned by the engine, fed by rank 0, watched for death and hangs.

The serving process spawns `world_size` processes (spawn, not fork: the server has threads). They
meet through a rendezvous file, each loads the model through its own `Engine` (same config, no
parallel runner) and installs the runner's share of the work on it. Rank 0 takes each batch of
requests from the serving process's queue and broadcasts it; every rank runs the engine's sampling
loop, and after each step rank 0 of each data-parallel replica broadcasts whether to stop
(cancellation or deadline), so all ranks stop at the same step. Results are gathered to rank 0 and
sent back. While idle, rank 0 broadcasts a heartbeat, so the collective timeout only fires on a
real loss.

Failures are fast and final: a rank that exits is seen by the serving process within 0.1 s; a rank
that hangs makes its peers' collectives time out (`timeout_s`), and a rank 0 that goes silent for
longer than that is declared hung. The request fails with `RankFailure`, the other ranks are
killed, and `alive` turns False (the service reports not-alive and must be restarted).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import traceback

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
"""Rank 0's idle broadcast interval; well under any `timeout_s`."""
POLL_S = 0.1
SILENCE_MARGIN_S = 5.0
"""How much longer than the collective timeout rank 0 may stay silent before it is itself declared hung."""


class RankFailure(RuntimeError):
    """A rank died or hung: the request failed and the runner is down until the service restarts."""


# -- the serving process's side --------------------------------------------------------------------


class RankPool:
    """The spawned ranks of one engine, and the queues to rank 0."""

    def __init__(self, runner, config) -> None:
        self.runner = runner
        self.timeout_s = runner.config.timeout_s
        self.failure: str | None = None
        self._lock = threading.Lock()
        context = multiprocessing.get_context("spawn")
        self._dir = tempfile.mkdtemp(prefix="ditserve-ranks-")
        rendezvous = os.path.join(self._dir, "rendezvous")
        self._requests, self._events, self._cancel = context.Queue(), context.Queue(), context.Event()
        self.processes = [
            context.Process(
                target=rank_main,
                args=(rank, runner.config, config, rendezvous, self._requests, self._events, self._cancel),
                name=f"ditserve-rank-{rank}",
                daemon=True,
            )
            for rank in range(runner.world_size)
        ]
        for process in self.processes:
            process.start()
        try:
            message = self._next_event(runner.config.start_timeout_s, "start")
        except RankFailure:
            self.close()
            raise
        if message[0] != "ready":
            self._fail(f"rank 0 failed to start: {message[1]}")
            raise RankFailure(self.failure)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    @property
    def alive(self) -> bool:
        return self.failure is None and all(process.is_alive() for process in self.processes)

    def generate_batch(self, requests, guidances, on_progress, cancel, deadline):
        from ditserve.errors import Cancelled
        from ditserve.request import ProgressEvent

        with self._lock:
            self._check_alive()
            self._cancel.clear()
            self._requests.put(("run", requests, deadline))
            while True:
                # rank 0's own collective timeout names the problem better: give it time to report first
                message = self._next_event(self.timeout_s + SILENCE_MARGIN_S, "request", cancel, deadline)
                kind = message[0]
                if kind == "progress":
                    if on_progress is not None:
                        on_progress(ProgressEvent(*message[1:]))
                elif kind == "result":
                    return message[1]
                elif kind == "cancelled":
                    raise Cancelled(message[1], message[2])
                elif kind == "error":
                    raise message[1]
                else:  # "fatal": a collective failed, usually because a peer is gone: name it if it is
                    self._fail("; ".join(filter(None, [self._wait_for_dead(), message[1]])))
                    raise RankFailure(f"{self.failure}; the parallel runner is down, restart the service")

    def _check_alive(self) -> None:
        if not self.alive:
            if self.failure is None:
                self._fail(self._dead_ranks() or "a rank is gone")
            raise RankFailure(f"the parallel runner is down ({self.failure}); restart the service")

    def _dead_ranks(self) -> str:
        dead = []
        for rank, process in enumerate(self.processes):
            if not process.is_alive():
                code = process.exitcode
                how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"code {code}"
                dead.append(f"rank {rank} (pid {process.pid}) exited with {how}")
        return "; ".join(dead)

    def _wait_for_dead(self, within_s: float = 2.0) -> str:
        """The ranks that exited, waiting briefly: a peer's death reaches rank 0 as a broken connection
        slightly before its exit status is visible here."""
        until = time.monotonic() + within_s
        while time.monotonic() < until and not self._dead_ranks():
            time.sleep(POLL_S / 2)
        return self._dead_ranks()

    def _next_event(self, timeout_s: float, during: str, cancel=None, deadline=None):
        """The next message from rank 0; a dead rank or `timeout_s` of silence is a `RankFailure`."""
        silent_since = time.monotonic()
        while True:
            if (cancel is not None and cancel.is_set()) or (deadline is not None and time.monotonic() > deadline):
                self._cancel.set()  # rank 0 of each replica reads it at the next step boundary
            try:
                return self._events.get(timeout=POLL_S)
            except queue.Empty:
                pass
            dead = self._dead_ranks()
            if dead:
                self._fail(f"{dead} during the {during}")
                raise RankFailure(f"{self.failure}; the parallel runner is down, restart the service")
            if time.monotonic() - silent_since > timeout_s:
                self._fail(f"no word from the ranks for {timeout_s:.0f} s during the {during} (a rank hangs)")
                raise RankFailure(f"{self.failure}; the parallel runner is down, restart the service")

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            log.error("parallel runner failed: %s", reason)
        self._stop(kill=True)

    def _stop(self, kill: bool) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill() if kill else process.terminate()
        for process in self.processes:
            process.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def close(self) -> None:
        """Ask the ranks to stop, then make sure they have."""
        if self.failure is None and all(process.is_alive() for process in self.processes):
            self._requests.put(("stop",))
            for process in self.processes:
                process.join(timeout=10)
        if self.failure is None:
            self.failure = "closed"
        self._stop(kill=True)


# -- each rank's side ---------------------------------------------------------------------------


def rank_main(rank, runner_config, config, rendezvous, requests, events, cancel) -> None:
    """A rank: join the group, load the model, install the runner, serve batches until told to stop."""
    import torch
    import torch.distributed as dist

    from ditserve.parallel.comm import Comm
    from ditserve.parallel.groups import build_groups, init_loopback
    from ditserve.registry import PARALLEL

    torch.set_num_threads(runner_config.threads)
    runner = PARALLEL.get(runner_config.name)(runner_config)
    try:
        backend = runner_config.backend
        if backend == "auto":
            backend = "nccl" if config.model.device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        init_loopback(rank, runner.world_size, rendezvous, runner_config.timeout_s, backend)
        engine = rank_engine(config, rank)
        comm = Comm()
        groups = build_groups(runner.degrees)
        installed = runner.install(engine, groups, comm)
        dist.barrier()
    except Exception as err:
        if rank == 0:
            events.put(("error-start", f"rank {rank}: {err}\n{traceback.format_exc()}"))
        raise
    if rank == 0:
        events.put(("ready",))
    try:
        serve(rank, runner, engine, groups, comm, installed, requests, events, cancel)
    except Exception as err:  # a collective failed: a peer died or hung
        if rank == 0:
            events.put(("fatal", f"rank {rank}: {type(err).__name__}: {err}"))
        raise SystemExit(1) from err
    dist.destroy_process_group()


def rank_engine(config, rank: int):
    """This rank's engine: the same model and plan, without the parallel runner (the ranks are it)."""
    from ditserve.engine import Engine
    from ditserve.registry import PARALLEL

    plan = config.plan.model_copy(update={"parallel": PARALLEL.parse("none", "plan.parallel")})
    if config.model.device.startswith("cuda"):
        config = config.model_copy(update={"model": config.model.model_copy(update={"device": f"cuda:{rank}"})})
    return Engine(config.model_copy(update={"plan": plan}))


def serve(rank, runner, engine, groups, comm, installed, requests, events, cancel) -> None:
    import torch
    import torch.distributed as dist

    from ditserve.errors import Cancelled

    parent = multiprocessing.parent_process()
    replica = groups.degrees.coordinates(groups.rank)["dp"]
    replicas = groups.degrees.dp
    root = groups.degrees.rank_of({"dp": replica})  # rank 0 of this data-parallel replica
    # new_group is collective: every rank creates every replica's group, in the same order
    replica_groups = [
        dist.new_group([r for r in range(runner.world_size) if groups.degrees.coordinates(r)["dp"] == index])
        for index in range(replicas)
    ]
    replica_group = replica_groups[replica]
    while True:
        message = ("noop",)
        if rank == 0:
            try:
                message = requests.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                message = ("stop",) if parent is not None and not parent.is_alive() else ("noop",)
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
        if message[0] == "stop":
            return
        if message[0] == "noop":
            continue
        _, batch, deadline = message
        mine = [i for i in range(len(batch)) if i % replicas == replica]
        started = time.perf_counter()

        def on_progress(event, deadline=deadline, started=started):
            stop = torch.zeros(1, dtype=torch.int32)
            if rank == root:
                if cancel.is_set():
                    stop[0] = 1
                elif deadline is not None and time.monotonic() > deadline:
                    stop[0] = 2
            dist.broadcast(stop, src=root, group=replica_group)
            if stop.item():
                raise Cancelled(event.step, "cancelled" if stop.item() == 1 else "deadline exceeded")
            if rank == 0:
                events.put(("progress", event.step, event.total, event.elapsed, event.latents.detach().cpu().clone()))

        installed.reset()
        try:
            results = engine.generate_batch([batch[i] for i in mine], on_progress) if mine else []
            outcome = ("ok", list(zip(mine, results, strict=True)))
        except Cancelled as err:
            outcome = ("cancelled", err.steps_done, err.reason)
        except Exception as err:
            if not _is_local(err):
                raise
            outcome = ("error", err)
        gathered = [None] * runner.world_size if rank == 0 else None
        dist.gather_object(outcome, gathered, dst=0)
        if rank == 0:
            events.put(_combine(gathered, len(batch), time.perf_counter() - started))


def _is_local(err: Exception) -> bool:
    """A request's own failure (a bad input the rank's engine refused), as opposed to a broken collective."""
    return isinstance(err, ValueError)


def _combine(outcomes, count: int, _seconds: float):
    for outcome in outcomes:
        if outcome[0] == "error":
            return outcome
    for outcome in outcomes:
        if outcome[0] == "cancelled":
            return outcome
    results = [None] * count
    for outcome in outcomes:
        for index, result in outcome[1]:
            results[index] = result
    return ("result", results)
