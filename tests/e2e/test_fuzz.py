"""A bounded fuzz run against the live server's REST, OpenAI and gRPC routes: no input may cause a 5xx,
an INTERNAL or a crash.

Hypothesis draws request bodies mixing valid and invalid values of every field (wrong types, out of
range, NaN/Infinity, unknown fields, huge strings), JSON nested thousands deep anywhere in a body, values
a lax parser would coerce into ints ("20", true, 2.5), and gRPC messages with any enum number and
non-finite or nested values inside strategy overrides. Every answer must be a 2xx or 4xx (any status but
INTERNAL/UNKNOWN on gRPC), and the server must still be ready and serve a normal request afterwards.
Steps are kept small so the run stays short; `DITSERVE_FUZZ_EXAMPLES=1000 pytest tests/e2e/test_fuzz.py`
runs a longer one.
"""

from __future__ import annotations

import json
import os

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_process import API_KEY

from ditserve.v1 import diffusion_pb2 as pb

pytestmark = pytest.mark.e2e

MAX_DEPTH = 8
"""The documented bound (README, serving/parsing.py): a body nested deeper is a 400."""
EXAMPLES = int(os.environ.get("DITSERVE_FUZZ_EXAMPLES", "60"))
"""Bodies for /generate (half as many for the OpenAI route); raise it for a longer run outside CI."""

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
small = st.integers(-3, 12)
fields = {
    "prompt": st.one_of(st.sampled_from(["label3", "3", "seven", "", "giraffe"]), st.text(max_size=50), junk),
    "class_label": st.one_of(st.integers(-2, 12), junk),
    "steps": st.one_of(small, junk),
    "guidance_scale": st.one_of(st.floats(-10, 200), junk),
    "seed": st.one_of(st.integers(-5, 2**64), junk),
    "num_images": st.one_of(st.integers(-1, 6), junk),
    "height": st.one_of(st.integers(-1, 20), junk),
    "width": st.one_of(st.integers(-1, 20), junk),
    "sampler": st.one_of(
        st.fixed_dictionaries({"name": st.sampled_from(["ddim", "ddpm", "nope"]), "steps": small}), junk
    ),
    "cache": st.one_of(
        st.fixed_dictionaries({"name": st.sampled_from(["none", "fora", "teacache", "nope"]), "interval": small}), junk
    ),
    "format": st.one_of(st.sampled_from(["json", "png", "raw"]), junk),
    "unknown": junk,
}
bodies = st.fixed_dictionaries({}, optional=fields).map(lambda b: {**b, "steps": 3} if "steps" not in b else b)
openai_bodies = st.fixed_dictionaries(
    {"prompt": fields["prompt"]},
    optional={
        "n": st.one_of(st.integers(-1, 6), junk),
        "size": st.one_of(st.sampled_from(["8x8", "4x4", "x"]), junk),
        "response_format": st.one_of(st.just("url"), junk),
        "steps": st.integers(1, 3),
        "model": junk,
    },
).map(lambda b: {**b, "steps": 3} if not isinstance(b.get("steps"), int) else b)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
        yield client


def post(http, path, body):
    answer = http.post(path, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
    assert answer.status_code < 500, (body, answer.status_code, answer.text[:300])
    assert answer.status_code in (200, 400, 404, 413, 422, 429), (body, answer.status_code)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=bodies)
def test_generate_never_fails_with_5xx(http, body):
    post(http, "/generate", body)


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=openai_bodies)
def test_openai_route_never_fails_with_5xx(http, body):
    post(http, "/v1/images/generations", body)


INT_FIELDS = ["steps", "class_label", "seed", "num_images", "height", "width", "preview_every"]
coercible = st.one_of(
    st.booleans(), st.integers(0, 50).map(str), st.floats(0.5, 50).filter(lambda x: not x.is_integer())
)


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(field=st.sampled_from(INT_FIELDS), value=coercible)
def test_ints_are_never_coerced(http, field, value):
    """`"20"`, `true` or `2.5` for an int field is a 400 naming the field (a lax parser would run it)."""
    answer = http.post("/generate", json={"class_label": 1, "steps": 2, field: value})
    assert answer.status_code == 400 and field in answer.text, (field, value, answer.status_code, answer.text[:300])


def nested_body(depth: int, opener: str, where: str) -> str:
    closer = {"[": "]", '{"k": ': "}"}[opener]
    deep = opener * depth + "1" + closer * depth
    if where == "body":
        return deep
    if where in ("sampler", "cache"):
        name = "ddim" if where == "sampler" else "fora"
        return f'{{"class_label": 1, "steps": 2, "{where}": {{"name": "{name}", "x": {deep}}}}}'
    return f'{{"class_label": 1, "steps": 2, "{where}": {deep}}}'


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    depth=st.integers(1, 5000),
    opener=st.sampled_from(["[", '{"k": ']),
    where=st.sampled_from(["body", "prompt", "sampler", "cache", "seed"]),
)
def test_nesting_anywhere_is_a_400_never_a_500(http, depth, opener, where):
    answer = http.post(
        "/generate", content=nested_body(depth, opener, where), headers={"content-type": "application/json"}
    )
    assert answer.status_code < 500, (depth, where, answer.status_code, answer.text[:300])
    if depth >= MAX_DEPTH:
        assert answer.status_code == 400, (depth, where, answer.text[:300])


non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
leaf = st.one_of(
    non_finite, st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5)
)
struct_value = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)
override = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["ddim", "ddpm", "fora", "none", "nope", ""]),
        "fields": st.dictionaries(st.sampled_from(["steps", "eta", "interval", "x"]), struct_value, max_size=3),
    }
)
grpc_fields = st.fixed_dictionaries(
    {"steps": st.integers(-3, 4)},
    optional={
        "format": st.integers(-(2**31), 2**31 - 1),
        "class_label": st.integers(-(2**31), 2**31 - 1),
        "prompt": st.text(max_size=20),
        "guidance_scale": st.floats(allow_nan=True, allow_infinity=True, width=32),
        "seed": st.integers(0, 2**64 - 1),
        "num_images": st.integers(-3, 6),
        "height": st.integers(-3, 20),
        "width": st.integers(-3, 20),
        "preview_every": st.integers(-3, 3),
        "sampler": override,
        "cache": override,
    },
)


def grpc_message(fields: dict) -> pb.GenerateRequest:
    message = pb.GenerateRequest()
    for name, value in fields.items():
        if name in ("sampler", "cache"):
            extra = struct_pb2.Struct()
            extra.update(value.get("fields", {}))
            getattr(message, name).CopyFrom(pb.Strategy(name=value["name"], fields=extra))
        else:
            setattr(message, name, value)  # `format` takes any number: proto3 enums are open
    return message


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(fields=grpc_fields)
def test_grpc_never_fails_with_internal(grpc_client, fields):
    """Any status but INTERNAL/UNKNOWN; an image format the enum does not name is always INVALID_ARGUMENT."""
    unknown_format = fields.get("format", 0) not in pb.ImageFormat.values()
    try:
        grpc_client.stub.Generate(grpc_message(fields), timeout=120, metadata=grpc_client.metadata)
    except grpc.RpcError as err:
        assert err.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (fields, err.details())
        assert err.code() != grpc.StatusCode.DEADLINE_EXCEEDED, fields
        assert not unknown_format or err.code() == grpc.StatusCode.INVALID_ARGUMENT, (fields, err.details())
    else:
        assert not unknown_format, f"format {fields['format']} was served"


def test_the_server_is_healthy_after_fuzzing(server, http):
    assert http.get("/readyz").status_code == 200
    assert http.post("/generate", json={"class_label": 2, "steps": 2}).status_code == 200
