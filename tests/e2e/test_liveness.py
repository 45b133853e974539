"""/livez, /readyz and gRPC health follow the engine: a real server whose plan runs 2 gloo ranks, one of
which is killed (SIGKILL, a real fault) — the server then reports itself not alive and not ready, and
refuses requests with 503 naming the restart, instead of failing each one inside the model.

Slow (and e2e): the server spawns its ranks, which takes minutes on the shared 2-core machine.
"""

from __future__ import annotations

import httpx
import psutil
import pytest
from server_process import poll, start_server, stop_server

from ditserve.client import GrpcClient, RestClient, ServerError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PLAN = "{sampler: {name: ddim, steps: 4}, parallel: {name: ulysses, ulysses: 2, timeout_s: 30, start_timeout_s: 900}}"


def ranks(server) -> list[psutil.Process]:
    """The server's spawned rank processes (multiprocessing's spawn children of its worker)."""
    family = psutil.Process(server.proc.pid).children(recursive=True)
    return [p for p in family if "spawn_main" in " ".join(p.cmdline())]


def test_a_killed_rank_makes_the_server_not_alive_and_not_ready(tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = start_server(tmp_path, api_key=None, plan=PLAN)
    try:
        rest, grpc_client = RestClient(server.url), GrpcClient(server.grpc)
        assert httpx.get(f"{server.url}/livez").status_code == 200
        assert rest.generate(class_label=1, seed=0)["stats"]["steps"] == 4
        health = health_pb2_grpc.HealthStub(grpc_client.channel)

        def grpc_status():
            return health.Check(health_pb2.HealthCheckRequest(), timeout=5).status

        assert grpc_status() == health_pb2.HealthCheckResponse.SERVING
        victims = ranks(server)
        assert len(victims) == 2
        victims[1].kill()
        assert poll(lambda: httpx.get(f"{server.url}/livez").status_code == 503), "/livez still says alive"
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        assert poll(lambda: grpc_status() == health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(ServerError, match="restart the service") as err:
            rest.generate(class_label=1, seed=0)
        assert err.value.status == 503
        with pytest.raises(ServerError, match="restart the service") as err:
            grpc_client.generate(class_label=1, seed=0)
        assert err.value.status == "UNAVAILABLE"
        assert server.proc.poll() is None  # the process stays up for the orchestrator to restart
    finally:
        stop_server(server)
