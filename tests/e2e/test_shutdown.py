"""SIGTERM with requests in flight: both transports' requests finish, new ones are refused, the process exits."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from server_process import API_KEY

from ditserve.client import GrpcClient, RestClient, ServerError

pytestmark = pytest.mark.e2e


def test_sigterm_drains_in_flight_requests(server):
    """Uses (and ends) the shared server; the fixture starts a new one if another module needs it later."""
    steps_before = server.metric("ditserve_step_seconds_count")
    done: dict[str, object] = {}

    def call(name, client):
        try:
            done[name] = client.generate(class_label=1, seed=3, steps=400)["stats"]["steps"]
        except Exception as err:  # recorded and checked below
            done[name] = err

    threads = [threading.Thread(target=call, args=("rest", RestClient(server.url, API_KEY))),
               threading.Thread(target=call, args=("grpc", GrpcClient(server.grpc, API_KEY)))]  # fmt: skip
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while server.metric("ditserve_step_seconds_count") - steps_before < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(server.proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(ServerError) as refused:  # 503 while draining, or the port already closed
        RestClient(server.url, API_KEY, timeout=10).generate(class_label=1, steps=2)
    assert refused.value.status in (503, "UNAVAILABLE")
    with pytest.raises(ServerError) as rpc:
        GrpcClient(server.grpc, API_KEY).generate(class_label=1, steps=2, timeout=10)
    assert rpc.value.status == "UNAVAILABLE"
    for t in threads:
        t.join(120)
    assert done == {"rest": 400, "grpc": 400}
    assert server.proc.wait(60) == 0
