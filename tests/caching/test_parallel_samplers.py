"""A cache decides per model call, taking each call for one step; a parallel-in-time sampler (ParaDiGMS,
ParaTAA) evaluates a window of steps in one call, whose batch changes size from call to call. The
engine refuses the pair — a plan at load, a request before any model work — naming both, instead of
failing in the middle."""

from __future__ import annotations

import pytest
import torch

from ditserve.errors import RequestError

from .battery import engine_for, every_cache_settings, request

SETTINGS = every_cache_settings()
CACHES_BUT_NONE = [name for name in SETTINGS if name != "none"]


@pytest.fixture(scope="module")
def engine(dit4_dir):
    return engine_for(dit4_dir, {"name": "none"})


@pytest.mark.parametrize("sampler", [{"name": "paradigms", "window": 4}, {"name": "parataa"}])
@pytest.mark.parametrize("cache", CACHES_BUT_NONE)
def test_a_cache_beside_a_parallel_sampler_is_refused_before_any_model_work(engine, sampler, cache):
    ask = request(cache=SETTINGS[cache], sampler=sampler)
    before = engine.block_counter.count
    with pytest.raises(RequestError, match=f"sampler '{sampler['name']}' evaluates several steps") as err:
        engine.generate(ask)
    assert err.value.field == "cache" and engine.block_counter.count == before


def test_the_plans_cache_beside_a_requested_parallel_sampler_is_refused_naming_the_sampler(dit4_dir):
    cached = engine_for(dit4_dir, SETTINGS["fora"])
    ask = request(sampler={"name": "paradigms"})
    with pytest.raises(RequestError, match="use cache 'none' or a sequential sampler") as err:
        cached.validate(ask)
    assert err.value.field == "sampler"


def test_a_plan_with_both_is_refused_at_load(dit4_dir):
    from ditserve.config import parse_config
    from ditserve.engine import Engine
    from ditserve.errors import PlanError

    model = {"name": "tiny", "path": str(dit4_dir), "family": "dit"}
    plan = {"sampler": {"name": "parataa"}, "cache": SETTINGS["fora"]}
    with pytest.raises(PlanError, match="plan: sampler 'parataa' evaluates several steps.*cache 'fora'"):
        Engine(parse_config({"model": model, "plan": plan}))


def test_a_window_of_one_step_is_sequential_and_runs_with_a_cache(engine):
    ask = request(cache=SETTINGS["fora"], sampler={"name": "paradigms", "window": 1})
    result = engine.generate(ask)
    assert torch.isfinite(result.images).all()
    assert 0 < result.stats.block_evaluations < result.stats.block_evaluations_full
