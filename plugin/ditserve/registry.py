"""Registries of acceleration strategies: `CACHES`, `SAMPLERS`, `QUANTIZERS`, `PARALLEL`.

A strategy is a class with a pydantic `Config` (a `StrategyConfig` subclass) and the code that applies
it. It registers itself by name with a decorator:

    @CACHES.register("fora")
    class Fora(CacheStrategy):
        Config = ForaConfig

Built-in strategies are the modules of the registry's subpackage (`ditserve.caching`, ...); they are
imported on the first lookup, never at `import ditserve`, so importing the package stays cheap.
Third-party packages add strategies through the entry-point groups `ditserve.caching`,
`ditserve.sampling`, `ditserve.quantization` and `ditserve.parallel`: an entry point names either a
module whose import registers its strategies, or a strategy class, registered under the entry
point's name. A duplicate name or a class of the wrong kind is refused with the reason.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import threading
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

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


class Registry(Generic[S]):
    """Named strategies of one kind, filled by decorators, built-in modules and entry points."""

    def __init__(self, kind: str, package: str, base: str) -> None:
        self.kind = kind
        """Human name of the kind, e.g. "cache"; used in messages."""
        self.package = package
        """The subpackage whose modules hold the built-in strategies (e.g. "ditserve.caching")."""
        self.entry_point_group = package
        """Entry points in the group of the same name as the subpackage add third-party strategies."""
        self._base_path = base
        self._entries: dict[str, type[S]] = {}
        self._origins: dict[str, str] = {}
        self._loaded = False
        self._lock = threading.RLock()

    # -- registration -------------------------------------------------------------------------

    def register(self, name: str, *, origin: str | None = None):
        """Class decorator: register `cls` under `name` after checking its kind and config."""

        def decorator(cls: type[S]) -> type[S]:
            self._ensure_loaded()  # built-ins first, so a clash with one is caught here, not later
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
        module, _, attr = self._base_path.partition(":")
        return getattr(importlib.import_module(module), attr)

    def get(self, name: str) -> type[S]:
        """The strategy class registered as `name`; an unknown name is answered with the known ones."""
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; known {self.kind} strategies: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def origin(self, name: str) -> str:
        """Where `name` came from: the defining module, or `entry point <spec>` for a plugin."""
        self.get(name)
        return self._origins[name]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[tuple[str, type[S]]]:
        self._ensure_loaded()
        return iter(sorted(self._entries.items()))

    def parse(self, spec: Any, where: str) -> StrategyConfig:
        """Validate a `{name: ..., field: ...}` mapping into the named strategy's config.

        `where` is the dotted path of the mapping in the model config, used in error messages.
        """
        from ditserve.config import validate_model
        from ditserve.errors import ConfigError

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
        return validate_model(cls.Config, {**spec, "name": name}, where, f"{self.kind} {name!r}")

    # -- loading --------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # set first: the modules imported below call back into register()
            try:
                self._import_builtins()
                self._load_entry_points()
            except BaseException:
                self._loaded = False
                raise

    def _import_builtins(self) -> None:
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{module.name}")

    def _load_entry_points(self) -> None:
        for ep in entry_points(group=self.entry_point_group):
            try:
                loaded = ep.load()
            except Exception as err:  # a broken plugin must say which one it is
                raise RegistryError(f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to import: {err}") from err
            if isinstance(loaded, type) and loaded not in self._entries.values():
                self._add(ep.name, loaded, f"entry point {ep.value}")


CACHES: Registry = Registry("cache", "ditserve.caching", "ditserve.caching.base:CacheStrategy")
SAMPLERS: Registry = Registry("sampler", "ditserve.sampling", "ditserve.sampling.base:Sampler")
QUANTIZERS: Registry = Registry("quantizer", "ditserve.quantization", "ditserve.quantization.base:Quantizer")
PARALLEL: Registry = Registry("parallel runner", "ditserve.parallel", "ditserve.parallel.base:ParallelRunner")

REGISTRIES: dict[str, Registry] = {"cache": CACHES, "sampler": SAMPLERS, "quant": QUANTIZERS, "parallel": PARALLEL}
"""The plan section each registry fills, as named in the model config."""
