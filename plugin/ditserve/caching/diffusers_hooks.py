"""Caches that wrap diffusers' own hooks (`diffusers.hooks`): what they share.

diffusers installs its caches as `ModelHook`s in a `HookRegistry` on the transformer and its blocks.
Its stateful hooks keep their state per "cache context" and refuse to run without one: a pipeline
sets `cache_context("cond")` around each transformer call. Our engine batches [cond; uncond] into
one call, so one context, set before every call, holds the whole batch's state (decisions are
per batch). `reset` is `reset_stateful_hooks`; `remove` removes the hooks by name.
"""

from __future__ import annotations

from typing import ClassVar

from ditserve.caching.base import CacheStrategy
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
