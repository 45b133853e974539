"""Caches that wrap diffusers' own hooks (`diffusers.hooks`): what they share.

diffusers installs its caches as `ModelHook`s in a `HookRegistry` on the transformer and its blocks.
Its stateful hooks keep their state per "cache context" and refuse to run without one: a pipeline
sets `cache_context("cond")` around each transformer call. Our engine batches [cond; uncond] into
one call, so one context, set before every call, holds the whole batch's state (decisions are
per batch). `reset` is `reset_stateful_hooks`; `remove` removes the hooks by name.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

import torch
from pydantic import AfterValidator

from ditserve.caching.base import CacheStrategy
from ditserve.errors import PlanError
from ditserve.models.base import LoadedModel


class DiffusersHookCache(CacheStrategy):
    """Base of wrappers: subclasses give `install(transformer)` and the names of the hooks it adds."""

    hook_names: ClassVar[tuple[str, ...]] = ()

    def install(self, model: LoadedModel) -> None:
        raise NotImplementedError

    def apply(self, model: LoadedModel) -> None:
        from diffusers.hooks.hooks import CacheContext, HookRegistry

        self.transformer = model.transformer
        self.install(model)
        self.registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        context = CacheContext("batch")
        self._hook = self.transformer.register_forward_pre_hook(lambda module, args: self._set_context(context))

    def _set_context(self, context) -> None:
        from diffusers.hooks.hooks import _set_cache_context

        _set_cache_context(self.transformer, context)

    def reset(self) -> None:
        self.registry.reset_stateful_hooks()

    def remove(self) -> None:
        self._hook.remove()
        for name in self.hook_names:
            self.registry.remove_hook(name, recurse=True)


class AttentionHookCache(DiffusersHookCache):
    """Base of wrappers of diffusers' attention-level hooks (PAB, FasterCache).

    diffusers picks the attention layers by regular expressions on module names; here they are the
    family adapter's `attention_layers`, passed to diffusers as exact-name identifiers, and `apply`
    refuses to load when diffusers did not hook every layer it was given (a cache that silently hooks
    nothing would measure as a cache). diffusers' windows are in the scheduler's timesteps, which
    families scale differently (Flux's transformer takes σ ∈ [0, 1]); `level` gives the hooks the
    noise level relative to the request's first call instead, on a 0–1000 scale: 1000 at the first
    call, which therefore always computes (it fills the cache), falling towards 0 as the request ends.
    """

    layer_hook: ClassVar[str]
    """The hook diffusers puts on each attention layer (one of `hook_names`)."""

    def apply(self, model: LoadedModel) -> None:
        self.first_timestep: float | None = None
        self.timestep = 0.0
        self.layers = model.adapter.attention_layers(model.transformer)
        super().apply(model)
        self._level_hook = self.transformer.register_forward_pre_hook(self._read_timestep, with_kwargs=True)
        hooked = {name for name in self.wanted_layers() if self._hooked(self.layers[name])}
        missing = sorted(set(self.wanted_layers()) - hooked)
        if missing or not hooked:
            raise PlanError(
                f"cache {self.name!r}: diffusers' hooks did not reach the attention layers "
                f"{', '.join(missing) or '(none found)'} of this {model.adapter.family} transformer; this cache "
                f"cannot accelerate it — pick a block-level cache (e.g. fora) in plan.cache"
            )

    def wanted_layers(self) -> list[str]:
        """Names of the attention layers this cache hooks (default: all the adapter lists)."""
        return list(self.layers)

    def _hooked(self, layer) -> bool:
        registry = getattr(layer, "_diffusers_hook", None)
        return registry is not None and registry.get_hook(self.layer_hook) is not None

    def _read_timestep(self, module, args, kwargs) -> None:
        timestep = kwargs.get("timestep")
        if not isinstance(timestep, torch.Tensor) or not timestep.numel():
            raise PlanError(f"cache {self.name!r} needs the transformer called with a `timestep` tensor keyword")
        self.timestep = float(timestep.reshape(-1)[0])
        if self.first_timestep is None:
            self.first_timestep = self.timestep

    def level(self) -> float:
        """This call's noise level relative to the request's first call, 1000 → 0."""
        return 1000.0 * self.timestep / self.first_timestep if self.first_timestep else 0.0

    def reset(self) -> None:
        super().reset()
        self.first_timestep = None

    def remove(self) -> None:
        self._level_hook.remove()
        super().remove()

    @staticmethod
    def exactly(names: list[str]) -> tuple[str, ...]:
        """diffusers identifiers (regular expressions searched in module names) matching exactly `names`."""
        return tuple(f"^{re.escape(name)}$" for name in names)


def _check_window(window: tuple[float, float]) -> tuple[float, float]:
    low, high = window
    if not -1.0 <= low < high <= 1000.0:
        raise ValueError("window must be (low, high) with -1 <= low < high <= 1000 (1000: the first step)")
    return window


Window = Annotated[tuple[float, float], AfterValidator(_check_window)]
"""A noise-level window (see `AttentionHookCache.level`): inside [-1, 1000], not empty."""
