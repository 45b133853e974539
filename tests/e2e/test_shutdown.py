"""SIGTERM with requests in flight: readiness turns false at once; until the in-flight requests finish, new REST
requests are answered 503 "shutting down" (not refused or reset) and gRPC calls UNAVAILABLE; the in-flight
requests of both transports finish; then the process exits."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from server_process import API_KEY, poll

from ditserve.client import GrpcClient, RestClient, ServerError

pytestmark = pytest.mark.e2e

IN_FLIGHT_STEPS = 600


def test_sigterm_drains_in_flight_requests_and_answers_new_ones(server):
    """Uses (and ends) the shared server; the fixture starts a new one if another module needs it later."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    steps_before = server.metric("ditserve_step_seconds_count")
    done: dict[str, object] = {}

    def call(name, client):
        try:
            done[name] = client.generate(class_label=1, seed=3, steps=IN_FLIGHT_STEPS)["stats"]["steps"]
        except Exception as err:  # recorded and checked below
            done[name] = err

    threads = [threading.Thread(target=call, args=("rest", RestClient(server.url, API_KEY))),
               threading.Thread(target=call, args=("grpc", GrpcClient(server.grpc, API_KEY)))]  # fmt: skip
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while server.metric("ditserve_step_seconds_count") - steps_before < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(server.proc.pid, signal.SIGTERM)  # to BentoML's arbiter, which passes it on to the worker
    health = health_pb2_grpc.HealthStub(GrpcClient(server.grpc).channel)
    assert poll(lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503), "still ready"
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert poll(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == not_serving)
    answers = []
    while any(t.is_alive() for t in threads) and len(answers) < 50:  # new requests while in-flight ones run
        for client, options in (
            (RestClient(server.url, API_KEY, timeout=10), {}),
            (GrpcClient(server.grpc, API_KEY), {"timeout": 10}),
        ):
            with pytest.raises(ServerError) as refused:
                client.generate(class_label=1, steps=2, **options)
            answers.append((refused.value.status, refused.value.message))
        time.sleep(0.1)
    assert answers, "the in-flight requests ended before any new request was sent"
    expected = {503, "UNAVAILABLE"}
    assert all(status in expected and "shutting down" in message for status, message in answers), answers
    for t in threads:
        t.join(120)
    assert done == {"rest": IN_FLIGHT_STEPS, "grpc": IN_FLIGHT_STEPS}
    assert server.proc.wait(60) == 0
