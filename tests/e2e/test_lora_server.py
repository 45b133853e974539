"""LoRA per request over a real server whose model directory holds an adapter (`loras/ink/`): on REST, gRPC, the
OpenAI route and the client alike; an adapter request and a plain one sent together each get their own image;
a plain request after an adapter request is unchanged; a bad adapter is refused naming the field."""

from __future__ import annotations

import threading

import httpx
import pytest
from ditserve_testing import save_tiny_dit, save_tiny_lora
from server_process import API_KEY, start_server, stop_server

from ditserve.client import GrpcClient, RestClient, ServerError

pytestmark = pytest.mark.e2e

PLAIN = {"class_label": 3, "seed": 5, "steps": 6, "format": "raw"}
INK = {**PLAIN, "lora": "ink"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server of its own (the shared one's model has no adapters), with fixed-shape calls (`pad_batches`); conftest's
    `rest` and `grpc_client` talk to it."""
    tmp = tmp_path_factory.mktemp("lora")
    save_lora_into = save_tiny_dit(tmp / "tiny")  # start_server writes the same tiny DiT here again
    save_tiny_lora(save_lora_into, "ink")
    current = start_server(tmp, max_queue=8)  # room for the eight requests sent at once below
    yield current
    stop_server(current)


def pixels(result: dict) -> bytes:
    return result["images"][0]["data"]


def test_both_transports_list_the_adapter(rest, grpc_client):
    assert rest.models()[0]["loras"] == ["ink"]
    assert grpc_client.models()[0]["loras"] == ["ink"]


def test_a_plain_request_after_an_adapter_request_is_unchanged(rest, grpc_client):
    before = pixels(rest.generate(**PLAIN))  # a fresh server: only its plain warm-up requests ran before
    with_ink = pixels(grpc_client.generate(**INK))
    after = pixels(rest.generate(**PLAIN))
    assert after == before
    assert with_ink != before
    assert pixels(rest.generate(**INK)) == with_ink  # REST and gRPC run the same adapter


def test_adapter_and_plain_requests_sent_together_each_get_their_own_image(server, rest):
    """Eight requests at once, half with the adapter, from threads on both transports: each gets the image it
    gets alone, and none shared a model call with a request of the other kind."""
    plain, ink = {**PLAIN, "steps": 100}, {**INK, "steps": 100}  # long enough for the eight to overlap
    alone = {"plain": rest.generate(**plain), "ink": rest.generate(**ink)}
    results: dict[int, dict] = {}

    def send(k: int) -> None:
        client = RestClient(server.url, API_KEY) if k % 4 < 2 else GrpcClient(server.grpc, API_KEY)
        try:
            results[k] = client.generate(**(ink if k % 2 else plain))
        finally:
            client.close()

    threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == list(range(8))
    for k, result in results.items():
        assert pixels(result) == pixels(alone["ink" if k % 2 else "plain"])
        assert result["stats"]["batch_size"] <= 4  # at most the four of its own kind
    assert max(r["stats"]["batch_size"] for r in results.values()) >= 2, "no two requests were batched"


def test_the_openai_route_takes_the_adapter_as_an_extra_field(server, rest):
    def generate(**extra) -> dict:
        body = {"prompt": "label3", "n": 1, "seed": 5, "steps": 6, **extra}
        answer = httpx.post(
            f"{server.url}/v1/images/generations", json=body, headers={"authorization": f"Bearer {API_KEY}"}
        )
        return answer.json()

    plain, inked = generate()["data"][0]["b64_json"], generate(lora="ink")["data"][0]["b64_json"]
    assert plain != inked
    assert generate(lora="nope")["error"]["field"] == "lora"


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"lora": "nope"}, "lora", "unknown adapter 'nope'; this model has: ink"),
        ({"lora": "ink", "lora_scale": 3.0}, "lora_scale", "less than or equal to 2"),
        ({"lora_scale": 0.5}, "lora_scale", "name one in `lora`"),
    ],
)
def test_a_bad_adapter_is_refused_naming_the_field_on_rest_and_grpc(rest, grpc_client, fields, field, words):
    with pytest.raises(ServerError) as refused:
        rest.generate(**PLAIN, **fields)
    assert refused.value.status == 400 and refused.value.field == field and words in str(refused.value)
    with pytest.raises(ServerError) as refused:
        grpc_client.generate(**PLAIN, **fields)
    assert refused.value.status == "INVALID_ARGUMENT" and field in str(refused.value) and words in str(refused.value)
