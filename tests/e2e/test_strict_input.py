"""Strict request schemas on both transports: one validation path (serving/parsing.py) answers every malformed
request with 400 / INVALID_ARGUMENT naming the problem, before any model work — never a 5xx or INTERNAL."""

from __future__ import annotations

import httpx
import pytest
from google.protobuf import struct_pb2
from server_process import API_KEY

from ditserve.client import GrpcClient, ServerError
from ditserve.v1 import diffusion_pb2 as pb

pytestmark = pytest.mark.e2e

DEEP = "[" * 5000 + "]" * 5000
BAD_JSON = [  # (raw body, what the error must name)
    (DEEP, "nested"),
    ('{"class_label": 3, "prompt": ' + DEEP + "}", "nested"),
    ('{"class_label": 3, "sampler": {"name": "ddim", "eta": ' + DEEP + "}}", "nested"),
    ('{"class_label": 3, "sampler": {"name": "ddim", "x": [[[[[[[[[1]]]]]]]]]}}', "nested"),
    ('{"class_label": 3, "steps": "20"}', "steps"),
    ('{"class_label": 3, "steps": true}', "steps"),
    ('{"class_label": "3"}', "class_label"),
    ('{"class_label": 3, "steps": 2.5}', "steps"),
    ('{"class_label": 3, "seed": false}', "seed"),
    ('{"class_label": 3, "guidance_scale": "4"}', "guidance_scale"),
    ('{"class_label": 3, "class_label": 4}', "twice"),
    ('{"class_label": 3, "sampler": {"name": "ddim", "name": "ddpm"}}', "twice"),
    ('{"class_label": 3, "sampler": {"name": "ddim", "eta": NaN}}', "NaN"),
    ('{"class_label": 3, "cache": {"name": "fora", "interval": 1e999}}', "finite"),
    ('{"class_label": 3, "steps": 2', "JSON"),
    ('"just a string"', "object"),
]


def post(server, body: str | bytes, content_type: str | None = "application/json") -> httpx.Response:
    headers = {"authorization": f"Bearer {API_KEY}"}
    if content_type is not None:
        headers["content-type"] = content_type
    return httpx.post(f"{server.url}/generate", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(("body", "named"), BAD_JSON, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD_JSON)])
def test_malformed_json_gets_400_naming_the_problem(server, body, named):
    answer = post(server, body)
    assert answer.status_code == 400, answer.text[:300]
    assert named in answer.text


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_as_json_is_refused(server, content_type):
    answer = post(server, '{"class_label": 3, "steps": 2}', content_type)
    assert answer.status_code == 415 and "application/json" in answer.json()["error"]["message"]


def test_json_with_a_charset_is_accepted(server):
    answer = post(server, '{"class_label": 3, "steps": 2}', "application/json; charset=utf-8")
    assert answer.status_code == 200, answer.text[:300]


def grpc_call(grpc_client, message):
    return grpc_client._call(grpc_client.stub.Generate, message, 30)


@pytest.mark.parametrize("fmt", [99, -5, 3])
def test_grpc_refuses_an_unknown_image_format(grpc_client, fmt):
    message = GrpcClient.request(class_label=3, steps=2)
    message.format = fmt  # proto3 enums are open: the wire carries any number
    with pytest.raises(ServerError) as err:
        grpc_call(grpc_client, message)
    assert err.value.status == "INVALID_ARGUMENT" and "format" in err.value.message


@pytest.mark.parametrize(
    ("section", "fields"),
    [
        ("sampler", {"eta": float("nan")}),
        ("sampler", {"eta": float("inf")}),
        ("cache", {"interval": float("-inf")}),
        ("sampler", {"deep": {"a": [{"b": [{"c": [{"d": [1]}]}]}]}}),
        ("sampler", {"inner": {"x": float("nan")}}),
    ],
)
def test_grpc_refuses_non_finite_or_deep_strategy_fields(grpc_client, section, fields):
    """A NaN inside an override's Struct was INTERNAL ("Fail to serialize NaN"); now INVALID_ARGUMENT."""
    message = GrpcClient.request(class_label=3, steps=2)
    extra = struct_pb2.Struct()
    extra.update(fields)
    getattr(message, section).CopyFrom(pb.Strategy(name="ddim" if section == "sampler" else "fora", fields=extra))
    with pytest.raises(ServerError) as err:
        grpc_call(grpc_client, message)
    assert err.value.status == "INVALID_ARGUMENT", err.value.message


def test_grpc_refuses_a_negative_preview_interval(grpc_client):
    with pytest.raises(ServerError) as err:
        list(grpc_client.stream(class_label=3, steps=2, preview_every=-1, timeout=30))
    assert err.value.status == "INVALID_ARGUMENT" and "preview_every" in err.value.message


def test_strict_bodies_still_serve_both_transports(rest, grpc_client):
    assert rest.generate(class_label=3, seed=1, steps=2, guidance_scale=4)["stats"]["steps"] == 2
    fields = {"class_label": 3, "seed": 1, "steps": 2, "sampler": {"name": "ddim", "eta": 0.0, "steps": 2}}
    assert grpc_client.generate(**fields)["stats"]["steps"] == 2
