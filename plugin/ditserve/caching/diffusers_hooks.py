"""Caches that wrap diffusers' own hooks (`diffusers.hooks`): what they share.

diffusers installs its caches as `ModelHook`s in a `HookRegistry` on the transformer and its blocks.
Its stateful hooks keep their state per "cache context" and refuse to run without one: a pipeline
sets `cache_context("cond")` around each transformer call. Our engine batches [cond; uncond] into
one call, so one context, set before every call by a hook of ours on the transformer, holds the whole
batch's state (decisions are per batch). `reset` is `reset_stateful_hooks`; `remove` removes the hooks
by name (`ditserve.hooks`, in any order).

diffusers' block hooks (First Block Cache, TaylorSeer) subtract and extrapolate every stream a block
returns, and fail on a block that returns none for one: SD3's last joint block gives no text stream
(`None`). Around every dual-stream block this wrapper puts two hooks of its own — the innermost shows
the library a missing text stream as the block's text input passed through unchanged; the outermost
gives the block's caller its `None` back — so the library's arithmetic runs, and what leaves the block
is what the block gives.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import CacheContext, _set_cache_context
from pydantic import AfterValidator
from torch import nn

from ditserve.caching.base import CacheStrategy
from ditserve.caching.progress import DenoisingProgress
from ditserve.errors import PlanError
from ditserve.hooks import add_hook, registries_changed, remove_hook
from ditserve.models.base import LoadedModel, block_argument


class TextStreamIn(ModelHook):
    """Innermost on a dual-stream block: a text stream the block does not return is its text input."""

    def __init__(self, streams: Any) -> None:
        super().__init__()
        self.streams = streams
        self.drops_text = False
        """Whether the block returned no text stream (learnt on its first call, which always computes)."""

    def new_forward(self, module, *args, **kwargs):
        output = self.fn_ref.original_forward(*args, **kwargs)
        index = self.streams.return_encoder_hidden_states_index
        if not isinstance(output, tuple) or output[index] is not None:
            return output
        self.drops_text = True
        passed = block_argument(module, self.streams.encoder_hidden_states_argument_name, args, kwargs)
        return tuple(passed if position == index else value for position, value in enumerate(output))


class TextStreamOut(ModelHook):
    """Outermost on the same block: gives its caller the `None` the block itself returns."""

    def __init__(self, inner: TextStreamIn) -> None:
        super().__init__()
        self.inner = inner

    def post_forward(self, module, output):
        if not self.inner.drops_text or not isinstance(output, tuple):
            return output
        index = self.inner.streams.return_encoder_hidden_states_index
        return tuple(None if position == index else value for position, value in enumerate(output))


class DiffusersHookCache(CacheStrategy):
    """Base of wrappers: subclasses give `install(model)` and the names of the hooks it adds."""

    hook_names: ClassVar[tuple[str, ...]] = ()
    """The names diffusers registers its hooks under."""
    transformer: nn.Module | None = None

    @property
    def own_hook(self) -> str:
        """The name of this wrapper's own hooks (call tracking and context, text-stream guards)."""
        return f"ditserve.{type(self).__name__}"

    def install(self, model: LoadedModel) -> None:
        raise NotImplementedError

    def apply(self, model: LoadedModel) -> None:
        self.transformer = model.transformer
        self.context = CacheContext("batch")
        self.calls = DenoisingProgress(self._set_context)
        guards = []
        for group in model.adapter.block_groups(self.transformer):
            for block in group.blocks:
                streams = model.adapter.block_streams(block)
                if streams.return_encoder_hidden_states_index is not None:
                    guards.append((block, TextStreamIn(streams)))
                    add_hook(self.transformer, block, guards[-1][1], self.own_hook + ".text_in")
        self.install(model)
        registries_changed(self.transformer)
        for block, inner in guards:
            add_hook(self.transformer, block, TextStreamOut(inner), self.own_hook + ".text_out")
        add_hook(self.transformer, self.transformer, self.calls, self.own_hook)
        self.registry = HookRegistry.check_if_exists_or_initialize(self.transformer)

    def _set_context(self) -> None:
        _set_cache_context(self.transformer, self.context)

    def reset(self) -> None:
        self.calls.reset()
        self.registry.reset_stateful_hooks()

    def remove(self) -> None:
        if self.transformer is None:  # `apply` refused before it reached the model
            return
        for name in (*self.hook_names, self.own_hook, self.own_hook + ".text_in", self.own_hook + ".text_out"):
            remove_hook(self.transformer, name)


class AttentionHookCache(DiffusersHookCache):
    """Base of wrappers of diffusers' attention-level hooks (PAB, FasterCache).

    diffusers picks the attention layers by regular expressions on module names; here they are the
    family adapter's `attention_layers`, passed to diffusers as exact-name identifiers, and `apply`
    refuses to load when diffusers did not hook every layer it was given (a cache that silently hooks
    nothing would measure as a cache). diffusers' windows are in the scheduler's timesteps, which
    families scale differently (Flux's transformer takes σ ∈ [0, 1]); `level` gives the hooks the
    noise level relative to the request's first call instead (`DenoisingProgress.level`), on a 0–1000
    scale: 1000 at the first call, which therefore always computes (it fills the cache), falling towards
    0 as the request ends.
    """

    layer_hook: ClassVar[str]
    """The hook diffusers puts on each attention layer (one of `hook_names`)."""

    def apply(self, model: LoadedModel) -> None:
        self.layers = model.adapter.attention_layers(model.transformer)
        super().apply(model)
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

    def level(self) -> float:
        """This call's noise level relative to the request's first call, 1000 → 0."""
        return self.calls.level

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
