"""The cross-request cache over a real server (REST and gRPC, the step loop of continuous batching): a repeated
request starts part-way and says so in its stats, an opt-out or another class starts from noise, and a client cannot
name a cache scope (the runtime stamps it from the API key)."""

from __future__ import annotations

import numpy as np
import pytest
from server_process import start_server, stop_server

from ditserve.client import ServerError

pytestmark = pytest.mark.e2e

STEPS = 6
THREE = {"class_label": 3, "seed": 5, "steps": STEPS, "format": "raw"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server of its own with the cache enabled (the shared one's plan has it off); conftest's `rest` and
    `grpc_client` talk to it."""
    plan = "{sampler: {name: ddim, steps: 20}, approx_cache: {enabled: true}}"
    current = start_server(tmp_path_factory.mktemp("approx-cache"), plan=plan)
    yield current
    stop_server(current)


def pixels(result: dict) -> np.ndarray:
    return np.frombuffer(result["images"][0]["data"], dtype="<f4")


def test_a_repeat_starts_part_way_and_an_opt_out_from_noise(rest):
    first = rest.generate(**THREE)
    assert first["stats"]["resumed_from"] == 0 and first["stats"]["model_evaluations"] == STEPS
    again = rest.generate(**THREE)
    assert again["stats"]["resumed_from"] == STEPS // 2
    assert again["stats"]["model_evaluations"] == STEPS - STEPS // 2
    assert np.abs(pixels(again) - pixels(first)).max() < 1e-5  # DDIM reaches the kept state exactly
    opted = rest.generate(**THREE, approx_cache=False)
    assert opted["stats"]["resumed_from"] == 0 and pixels(opted).tobytes() == pixels(first).tobytes()
    other = rest.generate(**{**THREE, "class_label": 4})
    assert other["stats"]["resumed_from"] == 0 and other["stats"]["model_evaluations"] == STEPS


def test_a_client_cannot_name_a_scope(rest):
    with pytest.raises(ServerError) as refused:
        rest.generate(**THREE, tenant="someone-else")
    assert "tenant" in str(refused.value)


def test_grpc_carries_the_opt_out_and_the_start(grpc_client):
    five = {**THREE, "class_label": 5}
    assert grpc_client.generate(**five)["stats"]["resumed_from"] == 0
    assert grpc_client.generate(**five, approx_cache=False)["stats"]["resumed_from"] == 0
    again = grpc_client.generate(**five)
    assert again["stats"]["resumed_from"] == STEPS // 2 and again["stats"]["model_evaluations"] == STEPS // 2
