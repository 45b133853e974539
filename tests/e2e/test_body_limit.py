"""Oversize request bodies are refused before they reach memory: by the declared length at once, and while
streaming when no length is declared. The worker's memory is sampled throughout (bounded loops, loopback)."""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.parse

import pytest
from server_process import API_KEY

from ditserve.client import ServerError

pytestmark = pytest.mark.e2e

MB = 1 << 20
LIMIT = 1 * MB  # the default DITSERVE_MAX_BODY_BYTES
MEMORY_SLACK = 50 * MB


def open_request(server, headers: dict[str, str]) -> socket.socket:
    """A connection with a `POST /generate` whose headers are sent and whose body is not."""
    host, port = urllib.parse.urlsplit(server.url).netloc.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    lines = [
        "POST /generate HTTP/1.1",
        f"host: {host}",
        f"authorization: Bearer {API_KEY}",
        "content-type: application/json",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def answer_of(sock: socket.socket, wait_s: float) -> bytes:
    """What the server sent within `wait_s` seconds, up to its closing the connection (bounded)."""
    answer, deadline = b"", time.monotonic() + wait_s
    while select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        answer += data
    return answer


def send_until_answered(sock: socket.socket, chunks) -> bytes:
    """Stream `chunks` until the server answers or closes; return its answer (bounded by the chunks)."""
    for chunk in chunks:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
    return answer_of(sock, 30)


class PeakMemory:
    """Samples a process's resident memory every 20 ms while in its `with` block."""

    def __init__(self, process) -> None:
        self.process, self.peak, self._stop = process, 0, threading.Event()
        self.baseline = process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)  # what the server buffered shows after the client stops sending
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def test_a_declared_2gb_body_is_refused_at_once_without_reading_it(server):
    sock = open_request(server, {"content-length": str(2_000_000_000)})
    try:
        answer = answer_of(sock, 10)  # the old server waited for the body: nothing came
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"too_large" in answer


@pytest.mark.parametrize("framing", ["declared", "chunked"])
def test_a_300mb_body_is_refused_and_the_worker_memory_stays_bounded(server, framing):
    """300 MB sent as fast as loopback allows, with its length declared or chunked (no length): 413, and the
    worker's memory grows by less than 50 MB (the old server read it all, ~600 MB, before refusing)."""
    total, chunk = 300 * MB, b"x" * MB
    headers = {"content-length": str(total)} if framing == "declared" else {"transfer-encoding": "chunked"}
    frame = chunk if framing == "declared" else b"%x\r\n%s\r\n" % (len(chunk), chunk)
    with PeakMemory(server.worker()) as memory:
        sock = open_request(server, headers)
        try:
            answer = send_until_answered(sock, (frame for _ in range(total // MB)))
        finally:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert memory.growth < MEMORY_SLACK, f"worker memory grew by {memory.growth / MB:.0f} MB"


def test_grpc_refuses_a_message_over_the_same_bound(server, grpc_client):
    with pytest.raises(ServerError) as err:
        grpc_client.generate(prompt="x" * (LIMIT + 1))
    assert err.value.status == "RESOURCE_EXHAUSTED"


def test_the_server_still_serves_after_oversize_bodies(rest, grpc_client):
    assert rest.generate(class_label=1, seed=0, steps=2)["stats"]["steps"] == 2
    assert grpc_client.generate(class_label=1, seed=0, steps=2)["stats"]["steps"] == 2
