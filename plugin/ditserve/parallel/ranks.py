"""One rank of a multi-process executor: its engine (the runner applied), and the loop that serves batches.

Every rank builds an ordinary `Engine` with a `Placement` (its process groups), so the plan's runner is
applied at load like its cache and quantizer, and runs the engine's own sampling loop on every request.
Rank 0 takes each batch from its inbox (a queue the executor fills) and broadcasts it; each data-parallel
replica runs its share; after every step rank 0 of each replica broadcasts whether to stop (cancellation
or deadline), so all ranks stop at the same step; the outcomes are gathered to rank 0 and put in its
outbox. While idle, rank 0 broadcasts a heartbeat, so the collective timeout fires only on a real loss.
The same loop serves ranks spawned by the serving process and ranks started by torchrun.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from ditserve.config import ModelConfig
from ditserve.errors import Cancelled

HEARTBEAT_S = 1.0
"""Rank 0's idle broadcast interval; well under any `timeout_s`."""


def backend_for(config: ModelConfig) -> str:
    """The plan's backend: `auto` is NCCL when the model runs on CUDA, gloo otherwise."""
    backend = config.plan.parallel.backend
    if backend == "auto":
        return "nccl" if config.model.device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    return backend


def join(config: ModelConfig, init_method: str, rank: int | None = None, world_size: int | None = None) -> None:
    """Join the default process group (`env://` under torchrun, `file://` when spawned)."""
    runner = config.plan.parallel
    backend = backend_for(config)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank or 0)) % torch.cuda.device_count())
    options = {} if rank is None else {"rank": rank, "world_size": world_size}
    dist.init_process_group(backend, init_method=init_method, timeout=timedelta(seconds=runner.timeout_s), **options)


def rank_engine(config: ModelConfig):
    """This rank's engine: the whole plan, the runner applied over the process groups of this rank."""
    from ditserve.engine import Engine
    from ditserve.parallel.comm import Comm
    from ditserve.parallel.distributed import Placement
    from ditserve.parallel.groups import build_groups

    torch.set_num_threads(config.plan.parallel.threads)
    if config.model.device.startswith("cuda"):
        device = f"cuda:{torch.cuda.current_device()}"
        config = config.model_copy(update={"model": config.model.model_copy(update={"device": device})})
    degrees = config.plan.parallel.degrees()
    return Engine(config, placement=Placement(build_groups(degrees), Comm()))


def replica_share(count: int, replica: int, replicas: int) -> list[int]:
    """The indices of a batch of `count` requests that data-parallel replica `replica` computes."""
    return list(range(replica, count, replicas))


def serve(engine, inbox, outbox, cancel, orphaned: Callable[[], bool] = lambda: False) -> None:
    """Serve batches until rank 0 reads ("stop",) or finds itself `orphaned` (only rank 0 reads the inbox)."""
    degrees = engine.config.plan.parallel.degrees()
    rank = dist.get_rank()
    replica, replicas = degrees.coordinates(rank)["dp"], degrees.dp
    root = degrees.rank_of({"dp": replica})  # rank 0 of this data-parallel replica
    # new_group is collective: every rank creates every replica's group, in the same order
    replica_groups = [
        dist.new_group(members) for members in degrees.group_ranks(("ulysses", "ring", "pipefusion", "cfg"))
    ]
    replica_group = replica_groups[replica]
    while True:
        message = ("noop",)
        if rank == 0:
            try:
                message = inbox.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                message = ("stop",) if orphaned() else ("noop",)
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
        if message[0] == "stop":
            return
        if message[0] == "noop":
            continue
        _, batch, deadline = message
        mine = replica_share(len(batch), replica, replicas)

        def on_progress(event, deadline=deadline):
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
                outbox.put(("progress", event.step, event.total, event.elapsed, event.latents.detach().cpu().clone()))

        try:
            results = engine.generate_batch([batch[i] for i in mine], on_progress) if mine else []
            outcome = ("ok", list(zip(mine, results, strict=True)))
        except Cancelled as err:
            outcome = ("cancelled", err.steps_done, err.reason)
        except ValueError as err:  # the request's own failure (a bad input the engine refused), not a collective's
            outcome = ("error", err)
        gathered = [None] * dist.get_world_size() if rank == 0 else None
        dist.gather_object(outcome, gathered, dst=0)
        if rank == 0:
            outbox.put(combine(gathered, len(batch)))


def combine(outcomes: list, count: int) -> tuple:
    """Rank 0's message for a batch: the first error, else a cancellation, else every result in request order."""
    for kind in ("error", "cancelled"):
        for outcome in outcomes:
            if outcome[0] == kind:
                return outcome
    results = [None] * count
    for outcome in outcomes:
        for index, result in outcome[1]:
            results[index] = result
    return ("result", results)
