"""`RestClient` without a server: a refused connection is a `ServerError("UNAVAILABLE")`, as in `GrpcClient`.

The clients against a live server are exercised by tests/e2e."""

from __future__ import annotations

import socket
import time

import pytest

from ditserve.client import GrpcClient, RestClient, ServerError


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_rest_and_grpc_clients_report_an_unreachable_server_alike():
    port = closed_port()
    rest = RestClient(f"http://127.0.0.1:{port}", timeout=5)
    started = time.monotonic()
    with pytest.raises(ServerError) as refused:
        rest.generate(class_label=1, steps=2)
    assert refused.value.status == "UNAVAILABLE"
    assert f"127.0.0.1:{port}/generate" in refused.value.message
    assert time.monotonic() - started < 5  # refused at once, retried only on connect, never waits for the timeout
    rest.close()
    grpc_client = GrpcClient(f"127.0.0.1:{port}")
    with pytest.raises(ServerError) as rpc:
        grpc_client.generate(class_label=1, steps=2, timeout=5)
    assert rpc.value.status == "UNAVAILABLE"
    grpc_client.close()
