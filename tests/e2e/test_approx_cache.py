"""The cross-request cache over a real server (REST and gRPC, the step loop of continuous batching): a repeated
request starts part-way and says so in its stats, an opt-out or another class starts from noise, and a client cannot
name a cache scope (the runtime stamps it from the API key)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from server_process import API_KEY, start_server, stop_server

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


def test_the_openai_route_carries_the_opt_out(server, rest):
    """Seed 6 after a kept seed-5 run of the same class: the cache starts it from that run (its image is seed 5's),
    the opt-out from its own noise (its image is seed 6's)."""
    seven = {"class_label": 7, "steps": STEPS, "format": "raw"}
    kept = pixels(rest.generate(**seven, seed=5))
    own = pixels(rest.generate(**seven, seed=6, approx_cache=False))

    def openai(**extra) -> np.ndarray:
        body = {"prompt": "label7", "n": 1, "seed": 6, "steps": STEPS, **extra}
        answer = httpx.post(
            f"{server.url}/v1/images/generations", json=body, headers={"authorization": f"Bearer {API_KEY}"}
        )
        assert answer.status_code == 200, answer.text
        png = base64.b64decode(answer.json()["data"][0]["b64_json"])
        return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32).ravel() / 255

    def near(png: np.ndarray, raw: np.ndarray) -> bool:
        return np.abs(png - raw.reshape(-1)).max() <= 1 / 255 + 1e-6

    assert near(openai(approx_cache=False), own)
    assert near(openai(), kept) and not near(openai(approx_cache=False), kept)
