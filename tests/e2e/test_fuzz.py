"""A bounded fuzz run against the live server's REST and OpenAI routes: no input may cause a 5xx or a crash.

Hypothesis draws request bodies mixing valid and invalid values of every field (wrong types, out of
range, NaN/Infinity, unknown fields, huge strings); every answer must be a 2xx or 4xx, and the server
must still be ready and serve a normal request afterwards. Steps are kept small so the run stays short;
`DITSERVE_FUZZ_EXAMPLES=1000 pytest tests/e2e/test_fuzz.py` runs a longer one.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_process import API_KEY

pytestmark = pytest.mark.e2e

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


def test_the_server_is_healthy_after_fuzzing(server, http):
    assert http.get("/readyz").status_code == 200
    assert http.post("/generate", json={"class_label": 2, "steps": 2}).status_code == 200
