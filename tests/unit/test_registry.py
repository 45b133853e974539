"""Registries: decorator registration, checks on what is registered, lookups with helpful errors."""

from __future__ import annotations

import pytest

from ditserve.caching.base import CacheConfig, CacheStrategy
from ditserve.registry import CACHES, PARALLEL, QUANTIZERS, REGISTRIES, SAMPLERS, Registry, RegistryError
from ditserve.sampling.base import Sampler


class EmptyRegistry(Registry):
    """A cache registry without the built-ins, so tests do not leak names into CACHES."""

    def _import_builtins(self) -> None:
        pass


@pytest.fixture
def registry() -> Registry:
    return EmptyRegistry("cache", "ditserve.test-only", "ditserve.caching.base:CacheStrategy")


def make_cache(strategy_name: str):
    class TestCacheConfig(CacheConfig):
        name: str = strategy_name

    class TestCache(CacheStrategy):
        """A test cache."""

        Config = TestCacheConfig

    return TestCache


def test_every_registry_ships_none():
    for registry in REGISTRIES.values():
        assert "none" in registry.names()


def test_first_samplers_wrap_diffusers_ddim_and_ddpm():
    assert {"ddim", "ddpm"} <= set(SAMPLERS.names())
    assert SAMPLERS.get("ddim").scheduler_class == "DDIMScheduler"
    assert SAMPLERS.get("ddpm").scheduler_class == "DDPMScheduler"


def test_decorator_registers_and_lookup_returns_the_class(registry):
    cls = registry.register("tiny")(make_cache("tiny"))
    assert registry.get("tiny") is cls and cls.name == "tiny"
    assert "tiny" in registry and "tiny" in registry.names()


def test_duplicate_name_is_refused_with_its_origin(registry):
    registry.register("twice")(make_cache("twice"))
    with pytest.raises(RegistryError, match="already registered"):
        registry.register("twice")(make_cache("twice"))
    with pytest.raises(RegistryError, match=r"already registered \(by ditserve.caching.none\)"):
        CACHES.register("none")(make_cache("none"))
    assert CACHES.get("none").__module__ == "ditserve.caching.none"


def test_wrong_base_class_is_refused(registry):
    class NotACache(Sampler):
        pass

    with pytest.raises(RegistryError, match="must be a subclass of ditserve.caching.base.CacheStrategy"):
        registry.register("odd")(NotACache)


def test_class_without_own_config_is_refused(registry):
    class NoConfig(CacheStrategy):
        pass

    with pytest.raises(RegistryError, match="needs a `Config` class"):
        registry.register("bare")(NoConfig)


def test_bad_names_are_refused(registry):
    for bad in ("", "Upper", "has space", "-lead"):
        with pytest.raises(RegistryError, match="not allowed"):
            registry.register(bad)(make_cache("x"))


def test_unknown_name_lists_known_names():
    with pytest.raises(RegistryError) as err:
        SAMPLERS.get("dpm-solver-9000")
    assert "unknown sampler 'dpm-solver-9000'" in str(err.value)
    assert "ddim" in str(err.value) and "ddpm" in str(err.value)


def test_each_registry_holds_its_own_kind():
    for registry in (CACHES, SAMPLERS, QUANTIZERS, PARALLEL):
        for _, cls in registry:
            assert issubclass(cls, registry.base)
