"""The runners' hooks are diffusers `ModelHook`s, named in each module's `HookRegistry`, and come off in any
order: the stage take-over (PipeFusion, AsyncDiff) and the CFG split, installed together on one tiny DiT
and removed first-in-first-out or last-in-first-out, leave the model computing exactly what it did as
loaded. Groups of one rank (no communication), so no process group is needed."""

from __future__ import annotations

import pytest
import torch
from ditserve_testing import engine_for

from ditserve.parallel.comm import Comm
from ditserve.parallel.groups import Group
from ditserve.parallel.guidance import CFG_SPLIT_HOOK, apply_cfg_split, remove_cfg_split
from ditserve.parallel.stages import STAGES_HOOK, give_back, take_over


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
