"""Fidelity of every registered cache's defaults on the embedded models, against a floor a broken cache misses.

Each cache runs as a per-request override with its default settings (so the calibrated ones use the
calibration the embedded checkpoints ship) on the embedded models of the families it runs on (digits-dit
and digits-flow; digits-unet for a U-Net cache), at 50 and 20 steps and the
models' default guidance, on one fixed request of four images of different classes or prompts. Its mean
PSNR against the uncached images of the same seeds must reach the cache's floor (caching/floors.py,
where the floors are explained), and it must skip work. A deliberately stale cache must fail the same
check: that is what makes it a check.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import pytest
import torch

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache
from ditserve.caching.floors import FIDELITY_FLOORS_DB
from ditserve.quality import mean_finite, psnr
from ditserve.registry import CACHES
from ditserve.request import GenerationRequest

FAMILY = {"digits-dit": "dit", "digits-flow": "sd3", "digits-unet": "unet"}
"""Embedded model → its family."""
MODELS = tuple(FAMILY)
STEPS = (50, 20)
CLASSES = (0, 3, 7, 9)
PROMPTS = ("zero", "a handwritten three", "7", "the number nine")
CACHE_NAMES = [name for name in CACHES.names() if name != "none"]


def models_for(name: str) -> list[str]:
    """The embedded models cache `name` runs on: those of the families it names, else every transformer model."""
    families = CACHES.get(name).families
    return [model for model, family in FAMILY.items() if (family in families if families else family != "unet")]


def fixed_request(engine, steps: int, cache: dict | None) -> list[GenerationRequest]:
    """The check's four images: one per class (digits-dit) or prompt (digits-flow), seeds 7–10."""
    if engine.adapter.conditioning == "class":
        return [GenerationRequest(class_label=c, seed=7 + k, steps=steps, cache=cache) for k, c in enumerate(CLASSES)]
    return [GenerationRequest(prompt=p, seed=7 + k, steps=steps, cache=cache) for k, p in enumerate(PROMPTS)]


def run(engine, steps: int, cache: dict | None):
    """Images in [-1, 1] and the batch's stats."""
    results = engine.generate_batch(fixed_request(engine, steps, cache))
    return torch.cat([r.images for r in results]) * 2 - 1, results[0].stats


@pytest.fixture(scope="module")
def engines():
    from ditserve.engine import Engine

    torch.set_num_threads(1)
    return {model: Engine.from_config(f"builtin:{model}") for model in MODELS}


@pytest.fixture(scope="module")
def references(engines):
    """The uncached images of the fixed request, per (model, steps): shared by every cache's check."""
    return {(model, steps): run(engines[model], steps, None)[0] for model in MODELS for steps in STEPS}


def fidelity_problems(engines, references, cache: dict, floor: float) -> list[str]:
    """What fails the check for `cache` (a per-request override) on each of its models and step counts; empty if
    none."""
    problems = []
    for model in models_for(cache["name"]):
        for steps in STEPS:
            images, stats = run(engines[model], steps, cache)
            mean = mean_finite(psnr(images, references[model, steps]))
            where = f"{cache['name']} on {model} at {steps} steps"
            if not mean >= floor:
                problems.append(f"{where}: mean PSNR {mean:.1f} dB is under the floor {floor} dB")
            counts = getattr(CACHES.get(cache["name"]), "saves_evaluations", True)  # ICC: multiply-adds, not calls
            if counts and not stats.attention_evaluations < stats.attention_evaluations_full:  # skipped blocks too
                problems.append(f"{where}: computed every block and attention layer (skips nothing)")
    return problems


def test_every_registered_cache_has_a_floor():
    assert set(CACHE_NAMES) <= set(FIDELITY_FLOORS_DB), "record the new cache's floor in caching/floors.py"


@pytest.mark.parametrize("name", CACHE_NAMES)
def test_defaults_stay_above_the_floor_while_skipping(name, engines, references):
    assert fidelity_problems(engines, references, {"name": name}, FIDELITY_FLOORS_DB[name]) == []


# -- the test of the test -------------------------------------------------------------------------------


class StaleConfig(CacheConfig):
    name: Literal["stale-for-test"] = "stale-for-test"


class StaleCache(BlockCache):
    """Computes every block at the first call of a request, then reuses those residuals for the rest."""

    Config = StaleConfig

    def compute(self, index, block, args, kwargs) -> bool:
        return self.call == 0


@contextlib.contextmanager
def registered_for_test(cls: type):
    """`cls` registered as its config's name while in the block (the registry has no public way to forget one)."""
    name = cls.Config.model_fields["name"].default
    CACHES.register(name)(cls)
    try:
        yield name
    finally:
        CACHES._entries.pop(name, None)
        CACHES._origins.pop(name, None)


@pytest.fixture
def stale_cache():
    """`stale-for-test` registered for this test only."""
    with registered_for_test(StaleCache) as name:
        yield name


def test_a_stale_cache_fails_the_check(stale_cache, engines, references):
    floor = min(FIDELITY_FLOORS_DB.values())  # even the loosest floor
    problems = fidelity_problems(engines, references, {"name": stale_cache}, floor)
    assert len(problems) == len(models_for(stale_cache)) * len(STEPS) and all("under the floor" in p for p in problems)
