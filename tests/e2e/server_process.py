"""Start and stop a real `ditserve serve` process on free loopback ports, over a tiny random DiT."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

API_KEY = "e2e-secret-key"
STARTUP_S = 480  # generous: on a shared, loaded 2-core machine a start has taken from 20 s to 4 min


def poll(check, seconds: float = 10.0) -> bool:
    """True once `check()` is, False if it is not within `seconds` (checked every 50 ms)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    grpc: str
    log: Path
    api_key: str | None = None
    readyz_seen: list[int] = field(default_factory=list)
    """/readyz answers during start-up, in order (0: connection refused)."""
    health_seen: list[str] = field(default_factory=list)
    """gRPC health answers during start-up, in order."""

    def metric(self, name: str, **labels) -> float:
        """Sum of a Prometheus sample over series whose labels include `labels`."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def metrics_text(self) -> str:
        import httpx

        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        answer = httpx.get(f"{self.url}/metrics", headers=headers, timeout=10)
        answer.raise_for_status()
        return answer.text

    def worker(self):
        """The BentoML worker process that serves both transports (a child of the `bentoml serve` arbiter)."""
        import psutil

        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if "_bentoml_impl.worker.service" in " ".join(child.cmdline()):
                return child
        raise LookupError("no BentoML worker process found")


PLAN = "{sampler: {name: ddim, steps: 20}}"


def start_server(
    tmp: Path,
    *,
    api_key: str | None = API_KEY,
    warmup_rounds: int = 1,
    plan: str = PLAN,
    model: str | None = None,
    env: dict[str, str] | None = None,
    **limits,
) -> Server:
    """Start `ditserve serve` and wait (bounded) until /readyz is 200, recording what probes saw meanwhile.

    `plan` is the model config's plan in YAML flow style, `model` its model section (default: a tiny random DiT
    saved under `tmp`); `env` adds server settings (serving/settings.py);
    `limits` change the defaults below."""
    import grpc
    import httpx
    from ditserve_testing import save_tiny_dit
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if model is None:
        model = f"{{name: tiny, path: {save_tiny_dit(tmp / 'tiny')}, family: dit, guidance_scale: 4.0, threads: 1}}"
    config = tmp / "model.yaml"
    lim = {
        "max_steps": 1000,
        "max_batch": 4,
        "max_side": 8,
        "max_queue": 3,
        "batch_images": 4,
        "batch_wait_ms": 50,
        "pad_batches": True,  # test_server.py checks bit-identity across batch compositions
        "timeout_s": 60,
        "overrides": {"sampler": ["ddim", "ddpm"], "cache": ["none", "fora"]},
    }
    lim.update(limits)
    config.write_text(f"model: {model}\nplan: {plan}\nlimits: {lim}\n".replace("'", ""))
    port, grpc_port = free_port(), free_port()
    settings = env or {}
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", BENTOML_DO_NOT_TRACK="True", **settings)
    env.pop("DITSERVE_API_KEY", None)
    env["BENTOML_HOME"] = str(tmp / "bentoml-home")  # BentoML wipes $BENTOML_HOME/prometheus_multiproc_dir at start
    if api_key:
        env["DITSERVE_API_KEY"] = api_key
    log = tmp / "server.log"
    command = [sys.executable, "-m", "ditserve.cli", "serve", "--config", str(config), "--port", str(port),
               "--grpc-port", str(grpc_port), "--warmup-rounds", str(warmup_rounds)]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", log, api_key)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None or " failed\nTraceback" in log.read_text():  # exited, or its model did not load
            stop_server(server)
            raise RuntimeError(f"server exited or failed to load ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with grpc.insecure_channel(server.grpc) as channel:  # a fresh channel: no reconnect back-off
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                server.health_seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
            except grpc.RpcError:
                pass
        try:
            server.readyz_seen.append(httpx.get(f"{server.url}/readyz", timeout=2).status_code)
        except httpx.TransportError:
            server.readyz_seen.append(0)
        if server.readyz_seen[-1] == 200:
            return server
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server not ready after {STARTUP_S}s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    """SIGTERM (graceful drain); if that takes over 60 s, SIGKILL the server and its workers (BentoML starts
    each worker in its own process group, so they are found as descendants, not by group)."""
    import psutil

    if server.proc.poll() is not None:
        return
    family = [server.proc.pid] + [child.pid for child in psutil.Process(server.proc.pid).children(recursive=True)]
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(60)
    except subprocess.TimeoutExpired:
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.proc.wait(10)
