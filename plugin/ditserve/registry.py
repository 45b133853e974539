"""Registries of acceleration strategies: `CACHES`, `SAMPLERS`, `QUANTIZERS`, `PARALLEL`.

A strategy is a class with a pydantic `Config` (a `StrategyConfig` subclass) and the code that applies
it. The built-in strategies of a registry are a table in its subpackage's `__init__.py`, from name to
"module:Class" (as vLLM registers its models):

    BUILTINS = {"fora": "ditserve.caching.fora:Fora", ...}

A built-in module is imported the first time its name is looked up, and only then, so listing the
names imports no strategy and validating a config imports the modules it names and no others (and so
no torch for a plan whose strategies need none at import). Third-party strategies register with the
decorator, or through the entry-point groups `ditserve.caching`, `ditserve.sampling`,
`ditserve.quantization` and `ditserve.parallel`: an entry point names either a module whose import
registers its strategies, or a strategy class, registered under the entry point's name. A duplicate
name or a class of the wrong kind is refused with the reason.

    @CACHES.register("my-cache")
    class MyCache(CacheStrategy):
        Config = MyCacheConfig
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from ditserve.errors import ConfigError
from ditserve.validation import validate_model

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")


class StrategyConfig(BaseModel):
    """Base of every strategy's config: frozen, and an unknown field is an error, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: str
    """The registry name of the strategy this config belongs to."""


class Strategy:
    """Base of every strategy class; each kind (cache, sampler, ...) has its own subclass of it."""

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    name: ClassVar[str] = ""

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring: what the strategy does, for listings."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


class RegistryError(ValueError):
    """A registration or lookup that cannot be honoured; the message says what to change."""


S = TypeVar("S", bound=Strategy)


def import_object(path: str) -> Any:
    """The object a "module:attribute" path names, importing its module."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[S]):
    """Named strategies of one kind: a lazy table of built-ins, decorated classes and entry points."""

    def __init__(self, kind: str, package: str, base: str) -> None:
        self.kind = kind
        """Human name of the kind, e.g. "cache"; used in messages."""
        self.package = package
        """The subpackage whose `BUILTINS` table names the built-in strategies (e.g. "ditserve.caching")."""
        self.entry_point_group = package
        """Entry points in the group of the same name as the subpackage add third-party strategies."""
        self._base_path = base
        self._entries: dict[str, type[S]] = {}
        self._origins: dict[str, str] = {}
        self._plugins_loaded = False
        self._lock = threading.RLock()

    @property
    def builtins(self) -> dict[str, str]:
        """The built-in table: name → "module:Class" (importing the subpackage's `__init__` only)."""
        return importlib.import_module(self.package).BUILTINS

    # -- registration -------------------------------------------------------------------------

    def register(self, name: str, *, origin: str | None = None):
        """Class decorator: register `cls` under `name` after checking its kind and config."""

        def decorator(cls: type[S]) -> type[S]:
            self._add(name, cls, origin or cls.__module__)
            return cls

        return decorator

    def _add(self, name: str, cls: type, origin: str) -> None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise RegistryError(
                f"{self.kind} name {name!r} is not allowed: use lower-case letters, digits and . _ + - "
                "(starting with a letter or digit)"
            )
        base = self.base
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise RegistryError(
                f"cannot register {cls!r} as {self.kind} {name!r}: it must be a subclass of "
                f"{base.__module__}.{base.__qualname__}"
            )
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, StrategyConfig)) or config is base.Config:
            raise RegistryError(
                f"cannot register {cls.__qualname__} as {self.kind} {name!r}: it needs a `Config` class of its own "
                f"that subclasses {base.Config.__module__}.{base.Config.__qualname__}"
            )
        with self._lock:
            builtin = self.builtins.get(name)
            if builtin is not None and builtin != f"{cls.__module__}:{cls.__qualname__}":
                holder = builtin.partition(":")[0]
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered (by {holder}); {origin} must use a different name"
                )
            if name in self._entries and self._entries[name] is not cls:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered (by {self._origins[name]}); "
                    f"{origin} must use a different name"
                )
            self._entries[name] = cls
            self._origins[name] = origin
            cls.name = name

    # -- lookup ---------------------------------------------------------------------------------

    @property
    def base(self) -> type:
        return import_object(self._base_path)

    def get(self, name: str) -> type[S]:
        """The strategy class registered as `name`, importing only its module; an unknown name is answered
        with the known ones."""
        if name in self._entries:
            return self._entries[name]
        path = self.builtins.get(name)
        if path is not None:  # imported outside the lock: the module's own decorator takes it
            cls = import_object(path)
            if name not in self._entries:  # a built-in need not use the decorator
                self._add(name, cls, path.partition(":")[0])
            return self._entries[name]
        self._load_plugins()
        if name in self._entries:
            return self._entries[name]
        raise RegistryError(f"unknown {self.kind} {name!r}; known {self.kind} strategies: {', '.join(self.names())}")

    def names(self) -> list[str]:
        """Every registered name, sorted; imports no built-in strategy (third-party plugins load)."""
        self._load_plugins()
        return sorted(set(self.builtins) | set(self._entries))

    def origin(self, name: str) -> str:
        """Where `name` came from: the defining module, or `entry point <spec>` for a plugin."""
        self.get(name)
        return self._origins[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[tuple[str, type[S]]]:
        """(name, class) of every strategy, sorted: imports them all (for listings)."""
        return iter([(name, self.get(name)) for name in self.names()])

    def parse(self, spec: Any, where: str, strict: bool = False) -> StrategyConfig:
        """Validate a `{name: ..., field: ...}` mapping into the named strategy's config.

        `where` is the dotted path of the mapping in the model config, used in error messages; `strict`
        (a client's per-request override) refuses strings and bools where numbers belong.
        """
        if isinstance(spec, StrategyConfig):
            spec = spec.model_dump()
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict):
            raise ConfigError([f"{where}: expected a mapping with a `name` field, got {type(spec).__name__}"])
        name = spec.get("name", "none")
        try:
            cls = self.get(name)
        except RegistryError as err:
            raise ConfigError([f"{where}.name: {err}"]) from None
        return validate_model(cls.Config, {**spec, "name": name}, where, f"{self.kind} {name!r}", strict)

    # -- third-party plugins ----------------------------------------------------------------------

    def _load_plugins(self) -> None:
        """Load the entry points of this registry's group, once."""
        with self._lock:
            if self._plugins_loaded:
                return
            self._plugins_loaded = True  # set first: a plugin module's import calls back into register()
            try:
                for ep in entry_points(group=self.entry_point_group):
                    try:
                        loaded = ep.load()
                    except Exception as err:  # a broken plugin must say which one it is
                        raise RegistryError(
                            f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to import: {err}"
                        ) from err
                    if isinstance(loaded, type) and loaded not in self._entries.values():
                        self._add(ep.name, loaded, f"entry point {ep.value}")
            except BaseException:
                self._plugins_loaded = False
                raise


CACHES: Registry = Registry("cache", "ditserve.caching", "ditserve.caching.base:CacheStrategy")
SAMPLERS: Registry = Registry("sampler", "ditserve.sampling", "ditserve.sampling.base:Sampler")
QUANTIZERS: Registry = Registry("quantizer", "ditserve.quantization", "ditserve.quantization.base:Quantizer")
PARALLEL: Registry = Registry("parallel runner", "ditserve.parallel", "ditserve.parallel.base:ParallelRunner")

REGISTRIES: dict[str, Registry] = {"cache": CACHES, "sampler": SAMPLERS, "quant": QUANTIZERS, "parallel": PARALLEL}
"""The plan section each registry fills, as named in the model config."""
