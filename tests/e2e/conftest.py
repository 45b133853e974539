"""The shared end-to-end server: one process for all e2e modules, restarted only if a test stopped it."""

from __future__ import annotations

import pytest
from server_process import API_KEY, start_server, stop_server

from ditserve.client import GrpcClient, RestClient


@pytest.fixture(scope="session")
def _shared(tmp_path_factory):
    holder: dict = {}
    yield holder
    if "server" in holder:
        stop_server(holder["server"])


@pytest.fixture(scope="module")
def server(_shared, tmp_path_factory):
    """API key on, queue of 3, batches of 4 images, a few warm-up batches (so not-ready is observable).

    test_shutdown.py (run last: modules run in name order) stops it with SIGTERM; a later module gets a new one.
    """
    current = _shared.get("server")
    if current is None or current.proc.poll() is not None:
        current = _shared["server"] = start_server(tmp_path_factory.mktemp("e2e"), warmup_rounds=5)
    return current


@pytest.fixture(scope="module")
def rest(server):
    client = RestClient(server.url, API_KEY)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = GrpcClient(server.grpc, API_KEY)
    yield client
    client.close()
