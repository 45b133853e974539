"""The process-group layout (xfuser's `tp-sp-pp-cfg-dp`, Ulysses fastest inside sp) and the load-time checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ditserve_testing import engine_for, tiny_wan_transformer

from ditserve.config import parse_config
from ditserve.errors import ConfigError, PlanError
from ditserve.hooks import hook_names
from ditserve.models import get_adapter
from ditserve.models.base import LoadedModel
from ditserve.parallel.comm import Comm
from ditserve.parallel.executor import open_executor
from ditserve.parallel.groups import Degrees, Group
from ditserve.parallel.sequence import route_attention, shard_sequence
from ditserve.parallel.ulysses import local_attention
from ditserve.registry import PARALLEL


def executor_for(path, **plan):
    """The multi-process executor for the tiny DiT: a refused plan fails here, before any rank is spawned."""
    return open_executor(parse_config({"model": {"name": "tiny", "path": str(path), "family": "dit"}, "plan": plan}))


def test_the_layout_is_xfusers_with_ulysses_fastest_inside_sp():
    degrees = Degrees(ulysses=2, ring=2, cfg=2)
    assert degrees.world_size == 8 and degrees.sp == 4
    assert degrees.group_ranks(("ulysses", "ring")) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert degrees.group_ranks(("ulysses",)) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert degrees.group_ranks(("ring",)) == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert degrees.group_ranks(("cfg",)) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert degrees.coordinates(6) == {"ulysses": 0, "ring": 1, "pipefusion": 0, "cfg": 1, "dp": 0}


def test_data_parallel_replicas_are_the_slowest_axis():
    degrees = Degrees(ulysses=2, dp=2)
    assert degrees.group_ranks(("dp",)) == [[0, 2], [1, 3]]
    assert [degrees.rank_of(degrees.coordinates(rank)) for rank in range(4)] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("parallel", "reason"),
    [
        ({"name": "ulysses", "ulysses": 4}, "does not divide the model's 2 attention heads"),
        ({"name": "ring", "ring": 32}, "does not divide the 16 image tokens"),
        ({"name": "usp", "ulysses": 2, "ring": 3}, "ulysses×ring = 6 does not divide the 16 image tokens"),
        ({"name": "pipefusion", "pipefusion": 4}, "2 transformer blocks cannot be split into 4 equal pipeline stages"),
        ({"name": "pipefusion", "pipefusion": 2, "patches": 32}, "16 image tokens, which 32 patches cannot split"),
        ({"name": "pipefusion", "pipefusion": 2, "patches": 3}, "16 image tokens, which 3 patches cannot split"),
        ({"name": "asyncdiff", "components": 4}, "2 transformer blocks cannot be split into 4 equal components"),
    ],
)
def test_degrees_the_model_cannot_take_fail_at_load_with_the_reason(tiny_dit_dir, parallel, reason):
    with pytest.raises(PlanError, match=reason):
        executor_for(tiny_dit_dir, parallel=parallel)


def test_a_degree_out_of_bounds_is_a_config_error(tiny_dit_dir):
    with pytest.raises(ConfigError, match="cfg"):
        executor_for(tiny_dit_dir, parallel={"name": "cfg", "cfg": 3})


@pytest.mark.parametrize("runner", [{"name": "pipefusion", "pipefusion": 2}, {"name": "asyncdiff", "components": 2}])
def test_a_staged_runner_refuses_a_block_cache_at_load(tiny_dit_dir, runner):
    with pytest.raises(PlanError, match="does not combine with cache 'fora'"):
        executor_for(tiny_dit_dir, cache={"name": "fora", "interval": 2}, parallel=runner)


@pytest.mark.parametrize(
    ("parallel", "reason"),
    [
        (
            {"name": "ulysses", "ulysses": 2, "ring": 2},
            "does not compose with ring 2 \\(world ulysses 2 × ring 2 = 4\\)",
        ),
        ({"name": "pipefusion", "pipefusion": 2, "ulysses": 2}, "does not compose with ulysses 2"),
        ({"name": "data", "dp": 2, "pipefusion": 2}, "does not compose with pipefusion 2"),
        ({"name": "usp", "ulysses": 1, "ring": 1}, "needs at least 2 ranks"),
    ],
)
def test_degrees_a_technique_does_not_drive_are_refused_with_the_numbers(parallel, reason):
    with pytest.raises(ConfigError, match=reason):
        parse_config({"model": {"name": "tiny", "path": "x", "family": "dit"}, "plan": {"parallel": parallel}})


@pytest.mark.parametrize(
    ("parallel", "world"),
    [
        ({"name": "usp", "ulysses": 2, "ring": 2, "cfg": 2, "dp": 2}, 16),
        ({"name": "pipefusion", "pipefusion": 2, "cfg": 2, "dp": 3}, 12),
        ({"name": "data", "dp": 2, "cfg": 2}, 4),
        ({"name": "ulysses", "ulysses": 4}, 4),
    ],
)
def test_degrees_compose_into_the_world_size(parallel, world):
    plan = parse_config({"model": {"name": "tiny", "path": "x", "family": "dit"}, "plan": {"parallel": parallel}}).plan
    assert plan.parallel.degrees().world_size == world


def test_a_family_whose_attention_processor_the_routers_cannot_reach_is_refused_at_load():
    """Wan's processor calls its own module's attention function: sharded, each rank would attend over its own
    tokens only. (Before this check the front failed on the model's shapes with a KeyError.)"""
    model = LoadedModel(get_adapter("wan"), tiny_wan_transformer(2), {}, Path("."), torch.device("cpu"), torch.float32)
    config = PARALLEL.parse({"name": "ulysses", "ulysses": 2}, "parallel")
    with pytest.raises(PlanError, match="not that of WanAttnProcessor .*use cfg or data parallelism"):
        PARALLEL.get("ulysses")(config).check(model, None)


ROUTINGS = {
    "sequence sharding": lambda model: shard_sequence(model, Group([0], None, 0), Comm(), lambda _: local_attention),
    "pipefusion's routing": lambda model: route_attention(model, lambda _: local_attention),
}


@pytest.mark.parametrize("routing", sorted(ROUTINGS))
def test_an_attention_quantizer_under_a_routed_attention_is_refused_when_a_rank_loads(tiny_dit_dir, routing):
    """sage's processor computes the product in its own kernel, which the routed attention never sees: under
    Ulysses each rank would attend over its own shard only (the routed attention ran 0 times per request)."""
    engine = engine_for(tiny_dit_dir, quant={"name": "sage"})
    loaded = hook_names(engine.model.transformer)
    with pytest.raises(PlanError, match="not that of KernelAttnProcessor .*use a weight quantizer or quant none"):
        ROUTINGS[routing](engine.model)
    assert hook_names(engine.model.transformer) == loaded  # refused before anything was installed
