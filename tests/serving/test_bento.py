"""The Bentos deploy both transports: their Dockerfiles expose the gRPC port beside REST, a container's
environment makes gRPC bind all interfaces, the GPU variant asks for a GPU on a CUDA image, and the built
Bento serves REST and gRPC (Docker cannot run here: `bentoml serve <tag>` runs it with the container's
environment, bound to loopback for the test's traffic)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ditserve_testing import wait_ready

ROOT = Path(__file__).parents[2]
BENTOS = {name: ROOT / f"bentos/{name}/bentofile.yaml" for name in ("digits", "digits-gpu", "digits-scenes")}
GRPC_PORT = "50051"


def dockerfile(bentofile: Path, out: Path) -> str:
    """The Dockerfile `bentoml build` writes into the Bento for this bentofile (rendered alone: no lock, fast)."""
    from bentoml._internal.bento.build_config import BentoBuildConfig

    with bentofile.open() as f:
        config = BentoBuildConfig.from_yaml(f).with_defaults()
    config.docker.write_to_bento(out, str(ROOT), config.conda)
    return (out / "env/docker/Dockerfile").read_text()


@pytest.mark.parametrize("name", BENTOS)
def test_the_dockerfile_exposes_grpc_and_marks_the_container(name, tmp_path):
    text = dockerfile(BENTOS[name], tmp_path)
    exposed = {line.split()[1] for line in text.splitlines() if line.startswith("EXPOSE ")}
    assert {"3000", GRPC_PORT} <= exposed
    assert "ENV BENTOML_CONTAINERIZED=true" in text.splitlines()
    envs = {e["name"]: e.get("value") for e in yaml.safe_load(BENTOS[name].read_text())["envs"]}
    assert "DITSERVE_GRPC_HOST" not in envs, "the Bento must not pin gRPC to an address (loopback in a container)"
    cuda = any(line.startswith("FROM nvidia/cuda:") for line in text.splitlines())
    assert cuda == (name == "digits-gpu")


def test_grpc_binds_all_interfaces_in_a_container_and_loopback_elsewhere(monkeypatch):
    from ditserve.serving.settings import Settings

    monkeypatch.delenv("DITSERVE_GRPC_HOST", raising=False)
    monkeypatch.delenv("BENTOML_CONTAINERIZED", raising=False)
    assert Settings().grpc_host == "127.0.0.1"
    monkeypatch.setenv("BENTOML_CONTAINERIZED", "true")  # what BentoML's Dockerfile sets
    assert Settings().grpc_host == "0.0.0.0"
    monkeypatch.setenv("DITSERVE_GRPC_HOST", "127.0.0.1")  # an explicit address wins
    assert Settings().grpc_host == "127.0.0.1"


@pytest.mark.parametrize(("name", "resources"), [("digits", None), ("digits-gpu", {"gpu": 1})])
def test_the_gpu_bento_asks_bentoml_for_a_gpu(name, resources):
    args = yaml.safe_load(BENTOS[name].read_text()).get("args", {})
    probe = (
        "import sys; from bentoml._internal.utils.args import set_arguments; "
        f"set_arguments({args!r}); import ditserve.serving.service as s; "
        "print(s.DiffusionServer.config.get('resources'))"
    )
    env = dict(os.environ, DITSERVE_CONFIG=str(ROOT / "bentos/digits/model.yaml"))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == repr(resources)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_bento(home: Path) -> Path:
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", "dist", "."], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert wheel.returncode == 0, wheel.stderr
    build = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "bentos/digits/bentofile.yaml", ".", "--output", "tag"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "BENTOML_HOME": str(home)},
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    return home / "bentos" / name / version


@pytest.mark.slow
def test_the_built_bento_serves_rest_and_grpc_with_the_containers_environment(tmp_path):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ditserve.client import GrpcClient, RestClient

    home = tmp_path / "bentoml"
    bento = build_bento(home)
    assert (bento / "src" / "bentos" / "digits" / "model.yaml").is_file()
    assert list((bento / "env" / "python" / "wheels").glob("ditserve-*.whl"))
    assert "torch==2.13.0" in (bento / "env" / "python" / "requirements.lock.txt").read_text()
    text = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert f"EXPOSE {GRPC_PORT}" in text and "ENV BENTOML_CONTAINERIZED=true" in text

    port, grpc_port = free_port(), free_port()
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    container = {e["name"]: str(e["value"]) for e in info["envs"]} | {"BENTOML_CONTAINERIZED": "true"}
    loopback = {"DITSERVE_GRPC_HOST": "127.0.0.1", "DITSERVE_GRPC_PORT": str(grpc_port)}  # the test's traffic only
    quick = {"DITSERVE_WARMUP_ROUNDS": "0"}  # a full 50-step warm-up batch can pass its deadline on a busy machine
    env = {**os.environ, **container, **loopback, **quick, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("DITSERVE_API_KEY", None)
    command = [sys.executable, "-m", "bentoml", "serve", f"{info['name']}:{info['version']}", "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", log, 600, failure_mark="Traceback")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        rpc = GrpcClient(f"127.0.0.1:{grpc_port}")
        image = rpc.generate(prompt="seven", seed=0, steps=2, timeout=120)["images"][0]
        assert image["data"].startswith(b"\x89PNG") and (image["height"], image["width"]) == (16, 16)
        rpc.close()
        assert RestClient(f"http://127.0.0.1:{port}").generate(prompt="seven", seed=0, steps=2)["images"]
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_the_scenes_bento_serves_the_scenes_model_within_its_own_limits():
    """Its own model and limits (32×32 scenes), and the same config as `builtin:digits-scenes` otherwise."""
    from ditserve.config import load_config

    served, shipped = load_config(ROOT / "bentos/digits-scenes/model.yaml"), load_config("builtin:digits-scenes")
    assert served.model == shipped.model and served.plan == shipped.plan
    assert served.model.family == "pixart" and served.limits.max_side == 32
