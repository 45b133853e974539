"""The battery every cache inherits (in the spirit of diffusers' `CacheTesterMixin`).

A strategy's test module subclasses `CacheBattery` as `TestXxx` and sets `name`, `exact` (settings
that compute every block) and `skipping` (settings that skip some); a cache that reuses attention
outputs inside blocks that still run (PAB, FasterCache) sets `unit = "attention"`, and its savings are
checked on the attention-layer count; a cache that recomputes some tokens of layers inside blocks that run
(ToCa, DuCa) sets `unit = "token"`, and they are checked on the token count. Every check runs on tiny random
models: a 4-block DiT through the real engine (CFG batch [cond; uncond], batch > 1) — a tiny U-Net
instead for a cache that runs on U-Nets only (`family = "unet"`) — and tiny Flux, PixArt, SD3, Wan and
U-Net models through their family adapters. On every family a cache runs, or refuses at load
(`PlanError`) with a sentence saying what to change — never fails in the middle of a request; `refuses`
lists the families where it refuses, with the words the refusal must contain (by default the U-Net,
whose stages no transformer cache understands).
"""

from __future__ import annotations

import importlib
import threading
from typing import ClassVar

import pytest
import torch

from ditserve.errors import Cancelled, ConfigError, PlanError
from ditserve.registry import CACHES
from ditserve.request import GenerationRequest

from .conftest import FAMILIES, FamilyLoop

STEPS = 8


def engine_for(path, cache: dict, family: str = "dit"):
    from ditserve.config import parse_config
    from ditserve.engine import Engine

    plan = {"cache": cache, "sampler": {"name": "ddim", "steps": STEPS}}
    return Engine(parse_config({"model": {"name": "tiny", "path": str(path), "family": family}, "plan": plan}))


ENGINE_FIXTURES = {
    "dit": ("dit4_dir", "uncached"),
    "unet": ("unet_dir", "unet_uncached"),
    "pixart": ("pixart_dir", "pixart_uncached"),
}
"""Family run through the real engine → the fixtures of its tiny checkpoint and of its engine with no cache."""
TEXT_FAMILIES = {"pixart"}
"""Engine families that take prompts, not class labels (a cache that needs text, e.g. T-GATE, runs on the tiny
PixArt engine)."""


def request(
    label: int | None = 3,
    seed: int = 1,
    num_images: int = 2,
    guidance: float = 4.0,
    steps: int = STEPS,
    cache: dict | None = None,
    sampler: dict | None = None,
    prompt: str | None = None,
):
    return GenerationRequest(
        class_label=label,
        prompt=prompt,
        seed=seed,
        num_images=num_images,
        guidance_scale=guidance,
        steps=steps,
        cache=cache,
        sampler=sampler,
    )


class CacheBattery:
    name: ClassVar[str]
    exact: ClassVar[dict]
    """Settings that compute every block: output must be bit-identical to no caching."""
    skipping: ClassVar[dict]
    """Settings that skip blocks on the tiny models."""
    skipping_families: ClassVar[dict[str, dict]] = {}
    """Per-family settings where `skipping` does not fit there (other block counts, other rates of change)."""
    exact_families: ClassVar[dict[str, dict]] = {}
    """Per-family settings where `exact` does not fit there."""
    refuses: ClassVar[dict[str, str]] = {"unet": "U-Net stages, not transformer blocks"}
    """Family → a regular expression the load-time refusal on that family must match."""
    family: ClassVar[str] = "dit"
    """The family of the tiny checkpoint run through the real engine: "dit", "unet" for a U-Net cache, or "pixart"
    for a cache that needs cross-attention."""
    unit: ClassVar[str] = "block"
    """What the cache saves evaluations of: whole "block"s, "attention" layers inside blocks, or "token"s of layers."""

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint(cls, request):
        """The tiny checkpoint of `family` and its engine with no cache."""
        return tuple(request.getfixturevalue(name) for name in ENGINE_FIXTURES[cls.family])

    @pytest.fixture(scope="class")
    @classmethod
    def cached(cls, checkpoint):
        return engine_for(checkpoint[0], {"name": cls.name, **cls.skipping}, cls.family)

    def request(self, label: int = 3, **fields) -> GenerationRequest:
        """The battery's request (`request`) for the engine's family: a text model gets the label as a prompt."""
        if self.family in TEXT_FAMILIES:
            return request(label=None, prompt=f"digit {label}", **fields)
        return request(label=label, **fields)

    def loop(self, family: str, settings: dict | None) -> FamilyLoop:
        loop = FamilyLoop(family)
        if settings is not None:
            cache = CACHES.get(self.name)(CACHES.parse({"name": self.name, **settings}, "plan.cache"))
            cache.apply(loop.model)
            loop.cache = cache
        return loop

    def loop_or_refusal(self, family: str, settings: dict) -> FamilyLoop | None:
        """The family's loop with the cache applied; None where the cache refuses the family, after checking
        that it refused at load with the sentence `refuses` expects."""
        if family not in self.refuses:
            return self.loop(family, settings)
        with pytest.raises(PlanError, match=self.refuses[family]):
            self.loop(family, settings)
        return None

    def evaluations(self, stats) -> tuple[int, int]:
        """(computed, with no caching) evaluations of the cache's unit in an engine result's stats."""
        return getattr(stats, f"{self.unit}_evaluations"), getattr(stats, f"{self.unit}_evaluations_full")

    # -- config and documentation ----------------------------------------------------------------

    def test_registered_with_a_documented_validated_config(self):
        cls = CACHES.get(self.name)
        doc = " ".join((__import__(cls.__module__, fromlist=["_"]).__doc__ or "").lower().split())  # unwrapped
        assert "arxiv" in doc or "github" in doc, "the module docstring cites the paper or the code it follows"
        assert "per batch" in doc or "per sample" in doc, "the docstring says whether decisions are per sample"
        for field, info in cls.Config.model_fields.items():
            assert field == "name" or info.description, f"{self.name}.{field} has no docstring"
        with pytest.raises(ConfigError, match="unknown field"):
            CACHES.parse({"name": self.name, "no_such_field": 1}, "plan.cache")

    # -- fidelity when nothing is skipped ----------------------------------------------------------

    def test_computing_every_block_is_bit_identical_to_no_cache(self, checkpoint):
        path, uncached = checkpoint
        engine = engine_for(path, {"name": self.name, **self.exact}, self.family)
        result = engine.generate(self.request())
        assert result.stats.block_evaluations == result.stats.block_evaluations_full
        assert result.stats.attention_evaluations == result.stats.attention_evaluations_full > 0
        assert torch.equal(result.images, uncached.generate(self.request()).images)

    @pytest.mark.parametrize("family", list(FAMILIES))
    def test_computing_every_block_is_bit_identical_on(self, family):
        cached = self.loop_or_refusal(family, self.exact_families.get(family, self.exact))
        if cached is None:
            return
        expected, full = self.loop(family, None).run(unit=self.unit)
        got, evaluations = cached.run(unit=self.unit)
        assert evaluations == full
        assert torch.equal(got, expected)

    # -- it skips ----------------------------------------------------------------------------------

    def test_skipping_settings_skip_blocks_with_cfg_and_a_batch(self, cached):
        for guidance in (4.0, 1.0):  # with and without the [cond; uncond] batch
            result = cached.generate(self.request(num_images=3, guidance=guidance))
            assert result.images.shape[0] == 3 and torch.isfinite(result.images).all()
            done, full = self.evaluations(result.stats)
            assert 0 < done < full

    @pytest.mark.parametrize("family", list(FAMILIES))
    def test_fewer_block_evaluations_on(self, family):
        cached = self.loop_or_refusal(family, self.skipping_families.get(family, self.skipping))
        if cached is None:
            return
        _, full = self.loop(family, None).run(unit=self.unit)
        got, evaluations = cached.run(unit=self.unit)
        assert torch.isfinite(got).all()
        assert evaluations < full

    # -- state ---------------------------------------------------------------------------------------

    def test_a_request_does_not_change_the_next(self, cached):
        alone = cached.generate(self.request(label=5, seed=9))
        cached.generate(self.request(label=1, seed=2, num_images=1, steps=STEPS - 3))
        after = cached.generate(self.request(label=5, seed=9))
        assert torch.equal(after.images, alone.images)
        assert self.evaluations(after.stats) == self.evaluations(alone.stats)

    def test_a_cancelled_request_leaves_nothing_behind(self, cached):
        alone = cached.generate(self.request(label=5, seed=9))
        stop = threading.Event()

        def cancel_at_step_3(event):
            if event.step == 3:
                stop.set()

        with pytest.raises(Cancelled):
            cached.generate(self.request(label=1, seed=2), on_progress=cancel_at_step_3, cancel=stop)
        assert torch.equal(cached.generate(self.request(label=5, seed=9)).images, alone.images)

    def test_remove_restores_the_model(self, checkpoint):
        path, uncached = checkpoint
        engine = engine_for(path, {"name": self.name, **self.skipping}, self.family)
        engine.cache.remove()
        result = engine.generate(self.request())
        assert result.stats.block_evaluations == result.stats.block_evaluations_full
        assert result.stats.attention_evaluations == result.stats.attention_evaluations_full
        assert torch.equal(result.images, uncached.generate(self.request()).images)


def every_cache_settings() -> dict[str, dict]:
    """Every built-in cache that runs on the tiny DiT: its name → its battery's `skipping` settings as a plan
    section ("none": none). The battery of cache `a-b` is `TestXxx` in test_ab.py; a built-in cache without
    one fails here. (A U-Net cache, `family = "unet"`, is left out: its battery runs it on the tiny U-Net.)"""
    settings = {}
    for name in CACHES.names():
        if not CACHES.get(name).__module__.startswith("ditserve.caching."):
            continue  # a third-party cache some other test installed
        if name == "none":
            settings[name] = {"name": name}
            continue
        module = importlib.import_module(f"{__package__}.test_{name.replace('-', '')}")
        found = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, CacheBattery)]
        battery = next((v for v in found if getattr(v, "name", None) == name), None)
        assert battery is not None, f"cache {name!r} has no CacheBattery in {module.__name__}"
        if battery.family != "dit":
            continue
        settings[name] = {"name": name, **battery.skipping}
    return settings
