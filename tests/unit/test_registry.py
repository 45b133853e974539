"""Registries: decorator registration, checks on what is registered, lookups with helpful errors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ditserve.caching.base import CacheConfig, CacheStrategy
from ditserve.registry import CACHES, PARALLEL, QUANTIZERS, REGISTRIES, SAMPLERS, Registry, RegistryError
from ditserve.sampling.base import Sampler

REPO = Path(__file__).resolve().parents[2]


class EmptyRegistry(Registry):
    """A cache registry without the built-ins, so tests do not leak names into CACHES."""

    @property
    def builtins(self) -> dict[str, str]:
        return {}


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


# -- laziness: a name costs nothing until it is used ---------------------------------------------------


def run_isolated(code: str) -> str:
    """Run `code` in a fresh interpreter (so `sys.modules` shows what it alone imported); its stdout."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout


STRATEGY_MODULES_IMPORTED = """
import sys
from ditserve.registry import REGISTRIES
tables = [registry.builtins for registry in REGISTRIES.values()]
modules = {path.partition(":")[0] for table in tables for path in table.values()}
print(" ".join(sorted(m for m in modules if m in sys.modules)))
"""


def test_loading_the_digits_config_imports_no_torch():
    code = (
        "import ditserve.config, ditserve.registry; ditserve.config.load_config('bentos/digits/model.yaml'); "
        "import sys; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ditserve'))"
    )
    run_isolated(code)


def test_listing_names_imports_no_strategy():
    code = "from ditserve.registry import REGISTRIES\nfor r in REGISTRIES.values(): r.names(); 'ddim' in r\n"
    assert run_isolated(code + STRATEGY_MODULES_IMPORTED).split() == []


def test_looking_up_a_name_imports_only_its_module():
    code = "from ditserve.registry import SAMPLERS; SAMPLERS.get('ddim')\n"
    assert run_isolated(code + STRATEGY_MODULES_IMPORTED).split() == ["ditserve.sampling.ddim"]


def test_every_sampler_and_every_none_imports_without_torch():
    """Samplers and the `none` of each registry are torch-free at import; a cache, quantizer or runner that
    defines torch modules or hooks imports torch when its config is validated (its process runs it anyway)."""
    code = """
import sys
from ditserve.registry import REGISTRIES, SAMPLERS
for name in SAMPLERS.names():
    SAMPLERS.get(name).Config.model_json_schema()
SAMPLERS.parse({"name": "sampler-scheduler", "stages": [{"sampler": {"name": "dpm-solver-v3"}}]}, "plan.sampler")
for registry in REGISTRIES.values():
    registry.parse({"name": "none"}, "plan")
assert "torch" not in sys.modules, "torch imported"
"""
    run_isolated(code)


def registered_in_source(package: str) -> dict[str, str]:
    """`@REGISTRY.register("name")` decorators on classes in the subpackage's modules: name → module:Class."""
    found = {}
    for path in sorted((REPO / "plugin" / "ditserve" / package).glob("*.py")):
        module = f"ditserve.{package}.{path.stem}"
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            for decorator in node.decorator_list:
                if (
                    isinstance(decorator, ast.Call)
                    and isinstance(decorator.func, ast.Attribute)
                    and decorator.func.attr == "register"
                    and decorator.args
                    and isinstance(decorator.args[0], ast.Constant)
                ):
                    found[decorator.args[0].value] = f"{module}:{node.name}"
    return found


@pytest.mark.parametrize("registry", REGISTRIES.values(), ids=REGISTRIES.keys())
def test_every_builtin_strategy_is_in_its_registry_table(registry):
    """A strategy module added to a subpackage must be listed in that subpackage's `BUILTINS`, or nothing
    would ever import it; and every row of the table must name the class registered under that name."""
    package = registry.package.rpartition(".")[2]
    assert registered_in_source(package) == registry.builtins
    for name, path in registry.builtins.items():
        cls = registry.get(name)
        assert f"{cls.__module__}:{cls.__qualname__}" == path and cls.name == name
