"""The torchrun entry point: the same ranks as a spawned executor, started on one or several machines.

    torchrun --nnodes N --nproc-per-node G --rdzv-endpoint HOST:PORT -m ditserve.parallel.worker \\
        --config model.yaml --host 127.0.0.1 --port 3000 --grpc-port 50051

Every rank joins the group torchrun set up (`env://`: NCCL on GPUs, gloo on CPUs) and builds its engine
with the plan's runner applied (`ranks.rank_engine`). Rank 0 also serves: REST (the Starlette app of
`serving/http_app.py` under uvicorn) and gRPC over one `Runtime`, whose executor is a `RankExecutor`
reading its shapes from rank 0's own model (no second copy) and feeding rank 0's serving loop, which runs
on a thread of this process; every other rank runs the loop on its main thread. A rank that dies makes
rank 0's next collective fail (torchrun then stops the others), and the service reports not alive.

The servers bind `--host` (127.0.0.1 by default). torchrun's own rendezvous store is torchrun's, not ours:
it listens on every interface of the machine that hosts it, so across machines keep that port inside the
cluster's network (tests/parallel/test_torchrun.py runs it in a network namespace with only loopback).
"""

from __future__ import annotations

import argparse
import logging
import queue
import threading
import traceback

from ditserve.parallel.launcher import RankChannel

log = logging.getLogger(__name__)


class LocalRankZero(RankChannel):
    """Rank 0's serving loop on a thread of the serving process, reached through in-process queues."""

    def __init__(self, timeout_s: float, engine) -> None:
        super().__init__(timeout_s, queue.Queue(), queue.Queue(), threading.Event())
        self.engine = engine
        self.runs = engine.describe()["runs"]
        self.loop = threading.Thread(target=self._serve, name="ditserve-rank-0", daemon=True)
        self.loop.start()

    def _serve(self) -> None:
        from ditserve.parallel.ranks import serve

        try:
            serve(self.engine, self._inbox, self._outbox, self._cancel)
        except Exception as err:  # a collective failed: a peer died or hung
            log.error("rank 0: %s\n%s", err, traceback.format_exc())
            self._outbox.put(("fatal", f"rank 0: {type(err).__name__}: {err}"))

    def dead_ranks(self) -> str:
        return "" if self.loop.is_alive() else "rank 0's serving loop has stopped"

    def join(self) -> None:
        self.loop.join(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ditserve.parallel.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="model config YAML or builtin:<name>")
    parser.add_argument("--host", default="127.0.0.1", help="address rank 0's REST and gRPC servers bind")
    parser.add_argument("--port", type=int, default=3000, help="REST port (rank 0)")
    parser.add_argument("--grpc-port", type=int, default=50051, help="gRPC port (rank 0)")
    parser.add_argument("--api-key", default=None, help="if set, both transports require it")
    parser.add_argument("--warmup-rounds", type=int, default=1)
    args = parser.parse_args(argv)

    import torch.distributed as dist

    from ditserve.config import load_config
    from ditserve.errors import PlanError
    from ditserve.parallel.ranks import join, rank_engine, serve
    from ditserve.registry import PARALLEL

    logging.basicConfig(level=logging.INFO)
    config = load_config(args.config)
    world_size = PARALLEL.get(config.plan.parallel.name)(config.plan.parallel).world_size
    if world_size == 1:
        raise PlanError("plan.parallel runs in one process: serve it with `ditserve serve`, not under torchrun")
    join(config, "env://")
    if dist.get_world_size() != world_size:
        raise PlanError(f"plan.parallel needs {world_size} ranks; torchrun started {dist.get_world_size()}")
    engine = rank_engine(config)
    dist.barrier()
    if dist.get_rank() == 0:
        serve_rank_zero(engine, config, args)
    else:
        serve(engine, None, None, threading.Event())
    dist.destroy_process_group()
    return 0


def serve_rank_zero(engine, config, args) -> None:
    """REST and gRPC over a runtime whose executor feeds this process's rank-0 loop; returns at SIGINT/SIGTERM."""
    import uvicorn

    from ditserve.parallel.executor import RankExecutor
    from ditserve.serving.grpc_server import GrpcServer
    from ditserve.serving.http_app import build_app
    from ditserve.serving.runtime import Runtime

    channel = LocalRankZero(config.plan.parallel.timeout_s, engine)
    runtime = Runtime(
        config,
        api_key=args.api_key,
        warmup_rounds=args.warmup_rounds,
        executor=lambda config: RankExecutor(config, channel, model=engine.model),
    )
    grpc = GrpcServer(runtime, args.host, args.grpc_port)
    print(f"ditserve: gRPC on {args.host}:{grpc.start()}", flush=True)
    runtime.on_ready(lambda: grpc.set_serving(True))
    runtime.start()
    try:
        uvicorn.run(build_app(runtime), host=args.host, port=args.port, log_level="warning")
    finally:
        grpc.stop(5.0)
        runtime.shutdown(5.0)
        channel.close()


if __name__ == "__main__":
    raise SystemExit(main())
