"""Connection limits on both transports, on a server of its own with short settings: an idle REST connection
and a half-sent request are closed after their timeouts, and an idle gRPC connection is closed (GOAWAY).
The same server leaves `/metrics` open (`DITSERVE_METRICS_OPEN=1`) while the API needs its key."""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.parse

import grpc
import httpx
import pytest
from server_process import API_KEY, start_server, stop_server

pytestmark = pytest.mark.e2e

IDLE_S, READ_S, GRPC_IDLE_S = 1.0, 2.0, 1.0
SETTINGS = {
    "DITSERVE_HTTP_IDLE_S": str(IDLE_S),
    "DITSERVE_HTTP_READ_S": str(READ_S),
    "DITSERVE_GRPC_IDLE_S": str(GRPC_IDLE_S),
    "DITSERVE_METRICS_OPEN": "1",
}


@pytest.fixture(scope="module")
def timed_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("timeouts"), env=SETTINGS)
    yield server
    stop_server(server)


def connect(server) -> socket.socket:
    host, port = urllib.parse.urlsplit(server.url).netloc.split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def seconds_until_closed(sock: socket.socket, limit_s: float) -> float | None:
    """Seconds until the server closes the connection (None if it is still open after `limit_s`)."""
    started = time.monotonic()
    while select.select([sock], [], [], max(0.0, started + limit_s - time.monotonic()))[0]:
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except ConnectionResetError:
            return time.monotonic() - started
    return None


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(timed_server):
    with connect(timed_server) as sock:
        closed = seconds_until_closed(sock, 10 * IDLE_S)
    assert closed is not None, "the server kept a silent connection open"
    assert IDLE_S * 0.8 <= closed <= IDLE_S + 3


def test_half_sent_headers_are_closed_after_the_read_timeout(timed_server):
    with connect(timed_server) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")  # never finished
        closed = seconds_until_closed(sock, 10 * READ_S)
    assert closed is not None, "the server kept a half-sent request open"
    assert READ_S * 0.8 <= closed <= READ_S + 3


def test_a_request_dribbled_within_the_read_timeout_is_answered(timed_server):
    with connect(timed_server) as sock:
        for part in (b"GET /livez HTTP/1.1\r\n", b"host: 127.0.0.1\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(READ_S / 4)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_an_idle_grpc_connection_is_closed(timed_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    seen: list[grpc.ChannelConnectivity] = []
    idle = threading.Event()

    def follow(state: grpc.ChannelConnectivity) -> None:
        seen.append(state)
        if state == grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in seen:
            idle.set()

    with grpc.insecure_channel(timed_server.grpc) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        channel.subscribe(follow)
        assert idle.wait(10 * GRPC_IDLE_S), f"the connection stayed open: {seen}"
        channel.unsubscribe(follow)
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1


def test_metrics_can_be_left_open_for_a_scraper(timed_server):
    assert httpx.get(f"{timed_server.url}/metrics", timeout=10).status_code == 200
    assert httpx.post(f"{timed_server.url}/generate", json={"class_label": 1}, timeout=10).status_code == 401
    answer = httpx.post(
        f"{timed_server.url}/generate",
        json={"class_label": 1, "steps": 2},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert answer.status_code == 200
