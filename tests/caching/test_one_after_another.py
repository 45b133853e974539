"""One request's cache never changes the next request's output: on one engine, every ordered pair (A, B)
of registered caches run as per-request overrides gives B's output as B gives on a fresh engine.

Each pair runs on an engine of its own, so a failure names the pair that caused it. Every cache runs
with its battery's `skipping` settings (calibration fields included), so each of them installs, skips
and keeps state; A runs a different request (other class, seed, batch and step count) so that anything
it leaves behind shows."""

from __future__ import annotations

import pytest
import torch

from .battery import engine_for, every_cache_settings, request

STEPS = 6


SETTINGS = every_cache_settings()


@pytest.fixture(scope="module")
def alone(dit4_dir) -> dict[str, torch.Tensor]:
    """Each cache's output on an engine that ran nothing else before (one fresh engine per cache)."""
    return {
        name: engine_for(dit4_dir, {"name": "none"}).generate(request(cache=cache, steps=STEPS)).images
        for name, cache in SETTINGS.items()
    }


@pytest.mark.parametrize("first", list(SETTINGS))
def test_a_cache_leaves_nothing_behind_for_any_next_cache(dit4_dir, alone, first):
    broken = []
    for second, cache in SETTINGS.items():
        engine = engine_for(dit4_dir, {"name": "none"})
        engine.generate(request(label=1, seed=2, num_images=1, steps=STEPS - 2, cache=SETTINGS[first]))
        try:
            images = engine.generate(request(cache=cache, steps=STEPS)).images
        except Exception as err:  # noqa: BLE001 - the test reports every pair that fails, with its error
            broken.append(f"{first} then {second}: {type(err).__name__}: {err}")
            continue
        difference = (images - alone[second]).abs().max().item()
        if difference > 1e-6:
            broken.append(f"{first} then {second}: output differs by {difference:.2e}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("plan", list(SETTINGS))
def test_the_plans_cache_is_back_unchanged_after_every_other_cache_ran_as_an_override(dit4_dir, plan):
    engine = engine_for(dit4_dir, SETTINGS[plan])
    before = engine.generate(request(steps=STEPS))
    for other in SETTINGS.values():
        engine.generate(request(label=1, seed=2, num_images=1, steps=STEPS - 2, cache=other))
    after = engine.generate(request(steps=STEPS))
    assert (after.images - before.images).abs().max().item() <= 1e-6
    assert after.stats.block_evaluations == before.stats.block_evaluations
