"""The process-group layout (xfuser's `tp-sp-pp-cfg-dp`, Ulysses fastest inside sp) and the load-time checks."""

from __future__ import annotations

import pytest

from ditserve.config import parse_config
from ditserve.errors import ConfigError, PlanError
from ditserve.parallel.executor import open_executor
from ditserve.parallel.groups import Degrees


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
