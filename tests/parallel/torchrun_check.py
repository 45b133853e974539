"""Run by test_torchrun.py, inside a network namespace of its own when it can have one: serve a 2-rank plan
with `torchrun --standalone -m ditserve.parallel.worker`, answer one request over REST and one over gRPC, list
every socket the launched processes listen on, then stop the launch. Prints one JSON line.

    python torchrun_check.py CONFIG PORT GRPC_PORT REQUEST_JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import psutil
from launches import stop_session

STARTUP_S = 600


def listeners(root: int) -> list[dict]:
    """Every listening TCP socket of `root` and its descendants: address, port, process name."""
    family = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    found = []
    for process in family:
        try:
            sockets = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for sock in sockets:
            if sock.status == psutil.CONN_LISTEN:
                found.append({"ip": sock.laddr.ip, "port": sock.laddr.port, "process": process.name()})
    return found


def main() -> None:
    config, port, grpc_port, request = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "ditserve.parallel.worker",
               "--config", config, "--port", str(port), "--grpc-port", str(grpc_port)]  # fmt: skip
    log = open(os.path.join(os.path.dirname(config), "torchrun.log"), "w")  # noqa: SIM115 (closed at exit)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out = {}
    try:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"torchrun exited with {proc.returncode}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/models", timeout=2) as answer:
                    model = json.load(answer)["models"][0]
                if model["ready"]:
                    out["runs"] = model.get("runs")
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"not ready after {STARTUP_S} s")
        from ditserve.client import GrpcClient, RestClient

        rest, grpc = RestClient(f"http://127.0.0.1:{port}"), GrpcClient(f"127.0.0.1:{grpc_port}")
        try:
            out["rest"] = [image["data"].hex() for image in rest.generate(**request, format="raw")["images"]]
            out["grpc"] = [
                image["data"].hex() for image in grpc.generate(timeout=120, **request, format="raw")["images"]
            ]
        finally:
            rest.close()
            grpc.close()
        out["listeners"] = listeners(proc.pid)
        out["interfaces"] = sorted(psutil.net_if_addrs())
    finally:
        stop_session(proc, 60)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
