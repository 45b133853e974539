"""A served model whose plan runs 2 ranks answers REST and gRPC like the single-process engine, and a rank
killed mid-request fails that request fast and takes the service to not-alive.

Real processes: `ditserve serve` (BentoML + the gRPC server) on loopback ports, which spawns its two
gloo ranks; the kill is a real SIGKILL of a rank process. Marked slow as well as e2e: starting the
server and its ranks takes minutes on the shared 2-core machine, more than this area's CI budget allows.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from ditserve_testing import engine_for, save_tiny_dit, wait_ready
from launches import stop_session

from ditserve.request import GenerationRequest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STARTUP_S = 400
TIMEOUT_S = 30
REQUEST = {"class_label": 4, "steps": 4, "seed": 9, "guidance_scale": 3.0, "format": "raw"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    model = save_tiny_dit(tmp / "tiny")
    config = tmp / "model.yaml"
    config.write_text(
        f"model: {{name: tiny, path: {model}, family: dit, threads: 1}}\n"
        "plan: {sampler: {name: ddim, steps: 4},"
        f" parallel: {{name: ulysses, ulysses: 2, timeout_s: {TIMEOUT_S}, start_timeout_s: 900}}}}\n"
        "limits: {max_side: 8, max_steps: 1000}\n"
    )
    port, grpc_port = free_port(), free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", BENTOML_DO_NOT_TRACK="True")
    env.pop("DITSERVE_API_KEY", None)
    log = tmp / "server.log"
    command = [sys.executable, "-m", "ditserve.cli", "serve", "--config", str(config), "--port", str(port),
               "--grpc-port", str(grpc_port), "--warmup-rounds", "1"]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log, STARTUP_S)
        yield url, f"127.0.0.1:{grpc_port}", model, proc.pid
    finally:
        stop_session(proc, 30)


def test_rest_and_grpc_answer_like_the_single_process_engine(served):
    from ditserve.client import GrpcClient, RestClient

    url, grpc_target, model, _ = served
    rest, grpc = RestClient(url), GrpcClient(grpc_target)
    try:
        over_rest = rest.generate(**REQUEST)["images"][0]
        over_grpc = grpc.generate(timeout=120, **REQUEST)["images"][0]
    finally:
        rest.close()
        grpc.close()
    fields = {k: v for k, v in REQUEST.items() if k != "format"}
    expected = engine_for(model, sampler={"name": "ddim", "steps": 4}).generate(GenerationRequest(**fields)).images[0]
    for answer in (over_rest, over_grpc):
        image = np.frombuffer(answer["data"], dtype=np.float32).reshape(expected.shape)
        assert np.abs(image - expected.numpy()).max() <= 1e-4


def test_a_rank_killed_mid_request_fails_it_fast_and_the_service_is_not_alive(served):
    """Last in this module: it takes the service down. (tests/e2e/test_liveness.py kills an idle rank and
    follows the health endpoints; this one kills a rank while a request runs on it.)"""
    import httpx
    import psutil

    from ditserve.client import RestClient, ServerError

    url, _, _, server_pid = served
    family = psutil.Process(server_pid).children(recursive=True)
    ranks = [process for process in family if "spawn_main" in " ".join(process.cmdline())]
    assert len(ranks) == 2, f"expected the 2 rank processes under the server, found {ranks}"
    victim = ranks[-1]
    rest = RestClient(url)
    killed_at = None
    try:
        with pytest.raises(ServerError) as failed:
            for event, _data in rest.stream(class_label=1, steps=1000, seed=3, format="raw"):
                if event == "progress" and killed_at is None:
                    victim.kill()  # SIGKILL
                    killed_at = time.monotonic()
        failed_after = time.monotonic() - killed_at
        assert failed_after < TIMEOUT_S, f"the request failed {failed_after:.1f} s after the kill"
        assert f"(pid {victim.pid}) exited with signal SIGKILL" in failed.value.message
        assert "restart the service" in failed.value.message
        assert httpx.get(f"{url}/livez", timeout=10).status_code == 503
        with pytest.raises(ServerError, match="restart the service") as refused:
            rest.generate(**REQUEST)
        assert refused.value.status == 503
    finally:
        rest.close()
