"""Per-request cache overrides on the real server, both transports: the server's config allows `none` and
`fora` (server_process.py); an allowed override runs that request with its cache (fewer blocks computed)
and leaves the next plain request unchanged; anything else is refused naming the `cache` field."""

from __future__ import annotations

import pytest

from ditserve.client import ServerError

pytestmark = pytest.mark.e2e

FIELDS = {"class_label": 2, "seed": 51, "steps": 6, "format": "raw"}
FORA = {"name": "fora", "interval": 3}


def test_an_allowed_cache_override_computes_fewer_blocks_on_both_transports(rest, grpc_client):
    plain = rest.generate(**FIELDS)
    over_rest, over_grpc = rest.generate(**FIELDS, cache=FORA), grpc_client.generate(**FIELDS, cache=FORA)
    assert plain["stats"]["block_evaluations"] == 6 * 2  # 6 calls × the tiny DiT's 2 blocks
    assert over_rest["stats"]["block_evaluations"] == over_grpc["stats"]["block_evaluations"] == 2 * 2  # calls 0, 3
    for counted in ("attention_evaluations", "token_evaluations"):  # the finer counts travel on both transports
        assert over_rest["stats"][counted] == over_grpc["stats"][counted] == plain["stats"][counted] // 3
        assert over_rest["stats"][f"{counted}_full"] == over_grpc["stats"][f"{counted}_full"] == plain["stats"][counted]
    assert over_rest["images"][0]["data"] == over_grpc["images"][0]["data"] != plain["images"][0]["data"]
    assert rest.generate(**FIELDS)["images"][0]["data"] == plain["images"][0]["data"]


@pytest.mark.parametrize("cache", [{"name": "teacache"}, {"name": "fora", "interval": 0}, {"name": "nope"}])
def test_a_disallowed_or_invalid_cache_override_is_refused_naming_the_field(rest, grpc_client, cache):
    for client, status in ((rest, 400), (grpc_client, "INVALID_ARGUMENT")):
        with pytest.raises(ServerError) as err:
            client.generate(class_label=2, steps=2, cache=cache)
        assert err.value.status == status and "cache" in err.value.message


def test_listings_say_what_a_request_may_override(rest, grpc_client):
    (model,) = rest.models()
    assert model["limits"]["allow_overrides"] and model["limits"]["overrides"]["cache"] == ["none", "fora"]
    (info,) = grpc_client.models()
    assert {"section": "cache", "names": ["none", "fora"]} in info["limits"]["overrides"]
