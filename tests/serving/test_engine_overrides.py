"""Per-request strategy overrides, in-process over a tiny random DiT: what `limits.overrides` allows runs
with the request's own cache or sampler, for that request only; what it does not allow is refused by name."""

from __future__ import annotations

import pytest
import torch

from ditserve.config import ServeLimits, parse_config
from ditserve.errors import ConfigError, RequestError
from ditserve.request import GenerationRequest
from ditserve.scheduler import Scheduler

FORA = {"name": "fora", "interval": 3}


def make_engine(path, **limits):
    from ditserve.engine import Engine

    model = {"name": "tiny", "path": str(path), "family": "dit"}
    return Engine(parse_config({"model": model, "plan": {"sampler": {"name": "ddim", "steps": 6}}, "limits": limits}))


@pytest.fixture(scope="module")
def engine(tiny_dit_dir):
    torch.set_num_threads(1)
    return make_engine(tiny_dit_dir, overrides={"sampler": ["ddim", "ddpm"], "cache": ["none", "fora"]})


def req(**fields) -> GenerationRequest:
    return GenerationRequest(**{"class_label": 3, "seed": 7, **fields})


def test_an_allowed_cache_override_changes_the_block_count_for_that_request_only(engine):
    plain = engine.generate(req())
    cached = engine.generate(req(cache=FORA))
    assert plain.stats.block_evaluations == plain.stats.block_evaluations_full == 6 * 2  # 6 calls × 2 blocks
    assert cached.stats.block_evaluations == 2 * 2  # fora interval 3 computes calls 0 and 3 only
    assert not torch.equal(cached.images, plain.images)
    again = engine.generate(req())  # the plan's cache (none) is back
    assert again.stats.block_evaluations == 12 and torch.equal(again.images, plain.images)
    assert torch.equal(engine.generate(req(cache={"name": "none"})).images, plain.images)


def test_disallowed_or_invalid_overrides_are_refused_naming_the_field(engine):
    with pytest.raises(RequestError, match="not allowed.*none, fora") as err:
        engine.validate(req(cache={"name": "fbcache"}))
    assert err.value.field == "cache"
    with pytest.raises(RequestError, match="interval") as err:
        engine.validate(req(cache={"name": "fora", "interval": 0}))
    assert err.value.field == "cache"
    with pytest.raises(RequestError, match="not allowed") as err:
        engine.validate(req(sampler={"name": "euler"}))
    assert err.value.field == "sampler"


def test_a_config_can_forbid_a_section_or_all_overrides(tiny_dit_dir):
    no_cache = make_engine(tiny_dit_dir, overrides={"sampler": ["*"]})
    with pytest.raises(RequestError, match="no per-request cache override") as err:
        no_cache.validate(req(cache=FORA))
    assert err.value.field == "cache"
    no_cache.validate(req(sampler={"name": "ddpm"}))
    none_at_all = make_engine(tiny_dit_dir, allow_overrides=False)
    with pytest.raises(RequestError, match="no per-request sampler override"):
        none_at_all.validate(req(sampler={"name": "ddpm"}))


def test_the_config_names_unknown_strategies_in_overrides():
    with pytest.raises(ConfigError, match=r"limits.overrides.*unknown cache 'forra'.*fora"):
        parse_config({"model": {"name": "m", "path": "x"}, "limits": {"overrides": {"cache": ["forra"]}}})
    with pytest.raises(ConfigError, match="limits.overrides"):
        parse_config({"model": {"name": "m", "path": "x"}, "limits": {"overrides": {"quant": ["*"]}}})


def test_naming_the_plans_strategy_keeps_its_other_fields(engine):
    job = engine.validate(req(sampler={"name": "ddim"}))
    assert job.sampler.config == engine.sampler.config and job.steps == 6  # not ddim's default steps


def test_static_batches_hold_only_requests_with_the_same_plan(engine):
    limits = ServeLimits(max_queue=8, batch_images=4, batch_wait_ms=300.0, batching="static")
    scheduler = Scheduler(engine, limits)
    try:
        tickets = [scheduler.submit(req(seed=s, **extra)) for s, extra in ((1, {}), (2, {"cache": FORA}), (3, {}))]
        plain_a, cached, plain_b = (t.result(60) for t in tickets)
        assert plain_a.stats.batch_size == plain_b.stats.batch_size == 2 and cached.stats.batch_size == 1
        assert cached.stats.block_evaluations == 4 and plain_a.stats.block_evaluations == 12
    finally:
        scheduler.close(30)


@pytest.mark.parametrize("steps", ["20", True, 20.5])
def test_an_override_field_of_the_wrong_json_type_is_refused_not_coerced(engine, steps):
    """A client's override is checked as strictly as the request's own fields: "20" or true is no step count."""
    with pytest.raises(RequestError, match="steps.*valid integer") as err:
        engine.validate(req(sampler={"name": "ddim", "steps": steps}))
    assert err.value.field == "sampler"
    assert engine.validate(req(sampler={"name": "ddim", "steps": 20})).steps == 20
