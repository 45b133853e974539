"""The runners' hooks are diffusers `ModelHook`s, named in each module's `HookRegistry`, and come off in any
order: the stage take-over (PipeFusion, AsyncDiff), the sequence sharding (Ulysses, Ring, USP, DistriFusion)
and the CFG split, installed together on one tiny DiT with the engine's counters and a request's cache, and
removed in every order, leave the model computing exactly what it did as loaded. Groups of one rank (no
communication), so no process group is needed."""

from __future__ import annotations

import contextlib
from itertools import permutations

import pytest
import torch
from ditserve_testing import engine_for

from ditserve.hooks import hook_names as hooks_by_module
from ditserve.parallel.comm import Comm
from ditserve.parallel.groups import Group
from ditserve.parallel.guidance import CFG_SPLIT_HOOK, apply_cfg_split, remove_cfg_split
from ditserve.parallel.sequence import ATTENTION_HOOK, SHARD_HOOK, shard_sequence, unshard_sequence
from ditserve.parallel.stages import STAGES_HOOK, give_back, take_over
from ditserve.parallel.ulysses import local_attention
from ditserve.request import GenerationRequest

ONE = Group([0], None, 0)
"""A group of one rank: cutting into one shard and gathering one shard are the identity, with no process group."""


def hook_names(model) -> set[str]:
    return {name for module in model.transformer.modules() if hasattr(module, "_diffusers_hook")
            for name in module._diffusers_hook.hooks}  # fmt: skip


@pytest.mark.parametrize("stages_first", [True, False])
def test_stage_and_cfg_hooks_come_off_in_any_order(tiny_dit_dir, stages_first):
    model = engine_for(tiny_dit_dir).model
    x = torch.randn(4, 1, 8, 8)
    inputs = {"timestep": torch.full((4,), 500), "class_labels": torch.tensor([1, 2, 10, 10])}

    def call():
        return model.transformer(x, return_dict=False, **inputs)[0]

    with torch.inference_mode():
        loaded = call()
        one = Group([0], None, 0)
        calls = []
        take_over(model, one, lambda hidden, run: calls.append(1) or run(hidden))
        apply_cfg_split(model.transformer, one, Comm())
        assert {STAGES_HOOK, CFG_SPLIT_HOOK} <= hook_names(model)
        assert torch.equal(call(), loaded) and calls == [1]  # the stage hook ran the whole stack, once
        removals = [lambda: give_back(model), lambda: remove_cfg_split(model.transformer)]
        for remove in removals if stages_first else reversed(removals):
            remove()
            assert torch.equal(call(), loaded)
        assert not {STAGES_HOOK, CFG_SPLIT_HOOK} & hook_names(model)
        assert calls == ([1] if stages_first else [1, 1])  # the stage hook runs while it is on, and only then


def test_a_cache_installed_over_the_stage_hooks_keeps_skipping_after_they_come_off(tiny_dit_dir):
    """diffusers' own `remove_hook` relinks the chain through the next hook's `forward`, which for a hook that
    may skip its module (a cache's) switches that hook off; the runners remove theirs through ditserve.hooks."""
    from ditserve.request import GenerationRequest

    engine = engine_for(tiny_dit_dir, sampler={"name": "ddim", "steps": 6})
    request = GenerationRequest(class_label=3, seed=1, cache={"name": "fora", "interval": 3})
    alone = engine.generate(request)
    take_over(engine.model, Group([0], None, 0), lambda hidden, run: run(hidden))
    with engine._cache_for(engine.validate(request).cache) as cache:  # the cache hooks over the stage hooks
        give_back(engine.model)
        with torch.inference_mode():
            cache.reset()
            images, stats = engine._run([engine.validate(request)], None, None, None)
    assert stats.block_evaluations == alone.stats.block_evaluations < stats.block_evaluations_full
    assert torch.equal(images, alone.images)


REQUEST_CACHES = {"fora": {"interval": 3}, "pab": {"self_interval": 3, "window": [-1, 1000]}}
"""A block-level cache (hooks on the blocks and the transformer) and diffusers' attention-level one (hooks on the
self-attentions, over the sharding's routing hooks, skipping the attention when it reuses)."""


@pytest.mark.parametrize("order", list(permutations(("sequence", "cfg", "cache"))), ids="-".join)
@pytest.mark.parametrize("cache_name", sorted(REQUEST_CACHES))
def test_sequence_sharding_cfg_split_and_a_request_cache_come_off_in_every_order(tiny_dit_dir, cache_name, order):
    engine = engine_for(tiny_dit_dir, sampler={"name": "ddim", "steps": 6})
    transformer = engine.model.transformer
    loaded = hooks_by_module(transformer)
    cached = GenerationRequest(class_label=3, seed=1, cache={"name": cache_name, **REQUEST_CACHES[cache_name]})
    plain = GenerationRequest(class_label=3, seed=1)
    cached_alone, plain_alone = engine.generate(cached), engine.generate(plain)
    assert cached_alone.stats.attention_evaluations < cached_alone.stats.attention_evaluations_full
    routed = []

    def attention(q, k, v):
        routed.append(1)
        return local_attention(q, k, v)

    shard_sequence(engine.model, ONE, Comm(), lambda _layer: attention)
    apply_cfg_split(transformer, ONE, Comm())
    on = contextlib.ExitStack()
    on.enter_context(engine._cache_for(engine.validate(cached).cache))  # the request's cache, as a request gets it
    assert {SHARD_HOOK, ATTENTION_HOOK, CFG_SPLIT_HOOK} <= hook_names(engine.model)
    removals = {
        "sequence": lambda: unshard_sequence(engine.model),
        "cfg": lambda: remove_cfg_split(transformer),
        "cache": on.close,
    }
    remaining = set(removals)
    for step in (None, *order):
        if step is not None:
            removals[step]()
            remaining.discard(step)
        before = len(routed)
        if "cache" in remaining:  # the cache keeps skipping what it skipped alone, whatever came off under it
            with torch.inference_mode():
                engine.cache.reset()
                images, stats = engine._run([engine.validate(cached)], None, None, None)
            assert torch.equal(images, cached_alone.images), f"after removing {step}"
            assert stats.attention_evaluations == cached_alone.stats.attention_evaluations
            assert stats.block_evaluations == cached_alone.stats.block_evaluations
        else:
            assert torch.equal(engine.generate(plain).images, plain_alone.images), f"after removing {step}"
        assert (len(routed) > before) == ("sequence" in remaining), "the sharded attention runs while on, only then"
    assert hooks_by_module(transformer) == loaded
    assert torch.equal(engine.generate(cached).images, cached_alone.images)


def test_an_attention_that_fails_leaves_nothing_routed(tiny_dit_dir):
    """A failing distributed attention (a rank lost mid-collective) must not leave the processors' attention
    routed: after the sharding comes off, the model computes as loaded."""
    engine = engine_for(tiny_dit_dir)
    x = torch.randn(2, 1, 8, 8)
    inputs = {"timestep": torch.full((2,), 500), "class_labels": torch.tensor([1, 2])}

    def call():
        return engine.model.transformer(x, return_dict=False, **inputs)[0]

    def lost(q, k, v):
        raise RuntimeError("a peer is gone")

    with torch.inference_mode():
        loaded = call()
        shard_sequence(engine.model, ONE, Comm(), lambda _layer: lost)
        with pytest.raises(RuntimeError, match="a peer is gone"):
            call()
        unshard_sequence(engine.model)
        assert torch.equal(call(), loaded)
