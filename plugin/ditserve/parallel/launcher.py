"""How the serving process reaches rank 0, and how it sees a rank die or hang.

A `RankChannel` sends a batch to rank 0's inbox and reads rank 0's outbox: progress after every step,
then the results, a cancellation or an error. `SpawnedRanks` spawns the ranks itself (spawn, not fork:
the server has threads; they meet through a rendezvous file, nothing listens beyond the peers' own
links); under torchrun, rank 0 serves in its own process (`worker.py`).

Failures are fast and final: a spawned rank that exits is seen within 0.1 s; a rank that hangs makes its
peers' collectives time out (`timeout_s`), and a rank 0 that goes silent for longer than that is declared
hung. The request fails with `RankFailure`, the other ranks are killed, and `alive` turns False (the
service reports not-alive and must be restarted).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import shutil
import signal
import tempfile
import time
import traceback

log = logging.getLogger(__name__)

POLL_S = 0.1
SILENCE_MARGIN_S = 5.0
"""How much longer than the collective timeout rank 0 may stay silent before it is itself declared hung."""


class RankFailure(RuntimeError):
    """A rank died or hung: the request failed and the runner is down until the service restarts."""


class RankChannel:
    """The serving process's end of rank 0's inbox and outbox; subclasses say how ranks are seen to die."""

    def __init__(self, timeout_s: float, inbox, outbox, cancel) -> None:
        self.timeout_s = timeout_s
        self.failure: str | None = None
        self.runs: dict = {}
        """What rank 0's engine runs on its device (`Engine.describe()["runs"]`), as it reported at start."""
        self._inbox, self._outbox, self._cancel = inbox, outbox, cancel

    def dead_ranks(self) -> str:
        """The ranks seen to have exited, in words ("" when none)."""
        return ""

    def join(self) -> None:
        """Wait a while for the ranks to stop by themselves."""

    def stop(self) -> None:
        """Make sure every rank has stopped."""

    @property
    def alive(self) -> bool:
        return self.failure is None and not self.dead_ranks()

    def run(self, requests, on_progress, cancel, deadline) -> list:
        """One batch through the ranks; progress as `ProgressEvent`s; the results in request order."""
        from ditserve.errors import Cancelled
        from ditserve.request import ProgressEvent

        if not self.alive:
            if self.failure is None:
                self._fail(self.dead_ranks() or "a rank is gone")
            raise RankFailure(f"the parallel runner is down ({self.failure}); restart the service")
        self._cancel.clear()
        self._inbox.put(("run", requests, deadline))
        while True:
            # rank 0's own collective timeout names the problem better: give it time to report first
            message = self.next_event(self.timeout_s + SILENCE_MARGIN_S, "request", cancel, deadline)
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

    def next_event(self, timeout_s: float, during: str, cancel=None, deadline=None):
        """The next message from rank 0; a dead rank or `timeout_s` of silence is a `RankFailure`."""
        silent_since = time.monotonic()
        while True:
            if (cancel is not None and cancel.is_set()) or (deadline is not None and time.monotonic() > deadline):
                self._cancel.set()  # rank 0 of each replica reads it at the next step boundary
            try:
                return self._outbox.get(timeout=POLL_S)
            except queue.Empty:
                pass
            dead = self.dead_ranks()
            if dead:
                self._fail(f"{dead} during the {during}")
                raise RankFailure(f"{self.failure}; the parallel runner is down, restart the service")
            if time.monotonic() - silent_since > timeout_s:
                self._fail(f"no word from the ranks for {timeout_s:.0f} s during the {during} (a rank hangs)")
                raise RankFailure(f"{self.failure}; the parallel runner is down, restart the service")

    def _wait_for_dead(self, within_s: float = 2.0) -> str:
        """The ranks that exited, waiting briefly: a peer's death reaches rank 0 as a broken connection
        slightly before its exit status is visible here."""
        until = time.monotonic() + within_s
        while time.monotonic() < until and not self.dead_ranks():
            time.sleep(POLL_S / 2)
        return self.dead_ranks()

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            log.error("parallel runner failed: %s", reason)
        self.stop()

    def close(self) -> None:
        """Ask the ranks to stop, then make sure they have."""
        if self.alive:
            self._inbox.put(("stop",))
            self.join()
        if self.failure is None:
            self.failure = "closed"
        self.stop()


class SpawnedRanks(RankChannel):
    """Ranks spawned by the serving process, on this machine."""

    def __init__(self, config) -> None:
        runner = config.plan.parallel
        context = multiprocessing.get_context("spawn")
        super().__init__(runner.timeout_s, context.Queue(), context.Queue(), context.Event())
        self._dir = tempfile.mkdtemp(prefix="ditserve-ranks-")
        rendezvous = os.path.join(self._dir, "rendezvous")
        world_size = runner.degrees().world_size
        self.processes = [
            context.Process(
                target=rank_main,
                args=(rank, world_size, config, rendezvous, self._inbox, self._outbox, self._cancel),
                name=f"ditserve-rank-{rank}",
                daemon=True,
            )
            for rank in range(world_size)
        ]
        for process in self.processes:
            process.start()
        try:
            message = self.next_event(runner.start_timeout_s, "start")
        except RankFailure:
            self.close()
            raise
        if message[0] != "ready":
            self._fail(f"rank 0 failed to start: {message[1]}")
            raise RankFailure(self.failure)
        self.runs = message[1]

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def dead_ranks(self) -> str:
        dead = []
        for rank, process in enumerate(self.processes):
            if not process.is_alive():
                code = process.exitcode
                how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"code {code}"
                dead.append(f"rank {rank} (pid {process.pid}) exited with {how}")
        return "; ".join(dead)

    def join(self) -> None:
        for process in self.processes:
            process.join(timeout=10)

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
        for process in self.processes:
            process.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)


def rank_main(rank, world_size, config, rendezvous, inbox, outbox, cancel) -> None:
    """A spawned rank: join the group, build the engine, serve batches until told to stop."""
    import torch.distributed as dist

    from ditserve.parallel.ranks import join, rank_engine, serve

    try:
        join(config, f"file://{rendezvous}", rank, world_size)
        engine = rank_engine(config)
        dist.barrier()
    except Exception as err:
        if rank == 0:
            outbox.put(("error-start", f"rank {rank}: {err}\n{traceback.format_exc()}"))
        raise
    if rank == 0:
        outbox.put(("ready", engine.describe()["runs"]))
    parent = multiprocessing.parent_process()
    try:
        serve(engine, inbox, outbox, cancel, orphaned=lambda: parent is not None and not parent.is_alive())
    except Exception as err:  # a collective failed: a peer died or hung
        if rank == 0:
            outbox.put(("fatal", f"rank {rank}: {type(err).__name__}: {err}"))
        raise SystemExit(1) from err
    dist.destroy_process_group()
