"""Ranks started by torchrun serve like one process: `torchrun --standalone --nproc-per-node 2 -m
ditserve.parallel.worker` on gloo, rank 0 serving REST and gRPC, answers a request with the images the
single-process engine makes (≤ 1e-4).

torchrun's own rendezvous store listens on every interface (TCPStore has no bind address), so the launch
runs in a fresh network namespace (`unshare -rn`: only loopback exists there) where the machine allows
one; the check also asserts that every socket our ranks open (the gloo links, REST, gRPC) is on
127.0.0.1, which holds with or without the namespace.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ditserve_testing import engine_for

from ditserve.request import GenerationRequest

pytestmark = pytest.mark.e2e
REQUEST = {"class_label": 4, "steps": 4, "seed": 9, "guidance_scale": 3.0, "num_images": 2}
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def namespaced() -> list[str]:
    """The command prefix that runs in a network namespace with only loopback, or [] where none can be made."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return []
    if subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True).returncode:
        return []
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def test_torchrun_ranks_serve_like_one_process(tmp_path, tiny_dit_dir):
    config = tmp_path / "model.yaml"
    config.write_text(
        f"model: {{name: tiny, path: {tiny_dit_dir}, family: dit, threads: 1}}\n"
        "plan: {sampler: {name: ddim, steps: 4}, parallel: {name: ulysses, ulysses: 2, timeout_s: 60}}\n"
        "limits: {max_side: 8, max_steps: 100}\n"
    )
    port, grpc_port = free_port(), free_port()
    prefix = namespaced()
    script = Path(__file__).with_name("torchrun_check.py")
    command = [*prefix, sys.executable, str(script), str(config), str(port), str(grpc_port), json.dumps(REQUEST)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    log = (tmp_path / "torchrun.log").read_text() if (tmp_path / "torchrun.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}\n{log[-3000:]}"
    out = json.loads(done.stdout.strip().splitlines()[-1])

    single = engine_for(tiny_dit_dir, sampler={"name": "ddim", "steps": 4})
    expected = single.generate(GenerationRequest(**REQUEST))
    assert out["runs"] == single.describe()["runs"]  # the model listing says what rank 0 runs, as one process's
    for transport in ("rest", "grpc"):
        for k, data in enumerate(out[transport]):
            image = np.frombuffer(bytes.fromhex(data), dtype=np.float32).reshape(expected.images[k].shape)
            assert np.abs(image - expected.images[k].numpy()).max() <= 1e-4, transport

    ours = [sock for sock in out["listeners"] if sock["process"] != "pt_elastic"]
    assert {sock["port"] for sock in ours} >= {port, grpc_port}
    assert all(sock["ip"] in LOOPBACK for sock in ours), ours
    if prefix:
        assert out["interfaces"] == ["lo"], out["interfaces"]
