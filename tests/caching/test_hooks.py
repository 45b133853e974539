"""Caches and counters are named diffusers hooks that come off in any order and leave the model as loaded."""

from __future__ import annotations

from itertools import permutations
from pathlib import Path

import pytest
import torch

from ditserve.hooks import hook_names
from ditserve.registry import CACHES

from .conftest import FAMILIES, FamilyLoop

ON_ONE_MODEL = {
    "fora": ({"interval": 3}, "block"),
    "fbcache": ({"threshold": 10.0}, "block"),
    "taylorseer": ({"interval": 3, "warmup": 2}, "block"),
    "pab": ({"self_interval": 3, "window": [-1, 1000]}, "attention"),
}
"""Caches of each kind of hook: our block hooks, diffusers' block hooks (with the text-stream guards on
SD3), diffusers' attention hooks."""


def cache(name: str):
    strategy = CACHES.get(name)
    return strategy(CACHES.parse({"name": name, **ON_ONE_MODEL[name][0]}, "plan.cache"))


def cached_loop(name: str) -> FamilyLoop:
    loop = FamilyLoop("sd3")
    cache(name).apply(loop.model)
    return loop


INPUTS = {
    "sd3": lambda: {
        "hidden_states": torch.randn(2, 4, 8, 8),
        "encoder_hidden_states": torch.randn(2, 5, 32),
        "pooled_projections": torch.randn(2, 32),
    },
    "pixart": lambda: {
        "hidden_states": torch.randn(2, 4, 8, 8),
        "encoder_hidden_states": torch.randn(2, 5, 32),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    },
}


def bare(family: str):
    """A tiny transformer of `family` behind its adapter, with no hooks at all (no counters), and inputs."""
    from ditserve.models import get_adapter
    from ditserve.models.base import LoadedModel

    transformer = FAMILIES[family]()
    model = LoadedModel(get_adapter(family), transformer, {}, Path("."), torch.device("cpu"), torch.float32)
    torch.manual_seed(1)
    return model, {**INPUTS[family](), "timestep": torch.full((2,), 500.0)}


@pytest.mark.parametrize(("first", "second"), list(permutations(ON_ONE_MODEL, 2)))
def test_removing_the_inner_of_two_caches_leaves_the_outer_working_and_then_the_model_as_loaded(first, second):
    unit = ON_ONE_MODEL[second][1]
    alone, alone_evaluations = cached_loop(second).run(unit=unit)
    loop = FamilyLoop("sd3")
    loaded = hook_names(loop.model.transformer)
    plain, full = loop.run(unit=unit)
    inner, outer = cache(first), cache(second)
    inner.apply(loop.model)
    outer.apply(loop.model)
    inner.remove()
    got, evaluations = loop.run(unit=unit)
    assert torch.equal(got, alone) and evaluations == alone_evaluations < full
    outer.remove()
    assert hook_names(loop.model.transformer) == loaded
    assert torch.equal(loop.run(unit=unit)[0], plain)


@pytest.mark.parametrize("order", ["first on, first off", "first on, last off"])
def test_two_caches_on_a_bare_model_come_off_in_either_order_to_the_model_as_loaded(order):
    model, inputs = bare("sd3")
    transformer = model.transformer
    with torch.inference_mode():
        plain = transformer(**inputs, return_dict=False)[0]
        caches = [cache("fora"), cache("fbcache")]
        for each in caches:
            each.apply(model)
        for each in caches if order == "first on, first off" else reversed(caches):
            each.remove()
        assert hook_names(transformer) == {}
        assert not [name for name, module in transformer.named_modules() if "forward" in module.__dict__]
        assert torch.equal(transformer(**inputs, return_dict=False)[0], plain)


def test_diffusers_hooks_on_modules_that_had_no_registry_get_their_cache_context():
    """diffusers' transformer registry remembers which registries lie below it; PixArt's blocks had none
    while PAB ran (only attention layers did), so without a refresh FBCache's would get no cache context."""
    model, inputs = bare("pixart")
    with torch.inference_mode():
        for name in ("pab", "fbcache"):
            each = cache(name)
            each.apply(model)
            model.transformer(**inputs, return_dict=False)
            each.remove()


def test_a_counter_installed_under_a_cache_would_count_skipped_blocks_so_it_refuses():
    from ditserve.counters import BlockCounter

    model, _ = bare("sd3")
    cache("fora").apply(model)
    with pytest.raises(ValueError, match="before any other hook"):
        BlockCounter(model)
