"""The engine's evaluation counters: transformer blocks and attention layers that really compute.

A counter is a hook (`ditserve.hooks`) on every block, or every attention layer, that the family
adapter lists. It is installed when the model loads, before any cache, so it sits innermost: a cache's
hook registered later wraps it, and a block or layer the cache skips never reaches it. Installing a
counter on a module that already has hooks would count calls a cache skips, so that is refused.
"""

from __future__ import annotations

from typing import ClassVar

from diffusers.hooks import ModelHook
from torch import nn

from ditserve.hooks import add_hook, remove_hook
from ditserve.models.base import LoadedModel


class CountHook(ModelHook):
    """Adds one to its counter before every call that reaches the module's own `forward`."""

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def pre_forward(self, module, *args, **kwargs):
        self.counter.count += 1
        return args, kwargs


class Counter:
    """Counts forward passes of a set of modules that really compute."""

    hook_name: ClassVar[str]

    def __init__(self, model: LoadedModel) -> None:
        self.count = 0
        self.root = model.transformer
        for module in self.counted(model):
            if getattr(getattr(module, "_diffusers_hook", None), "hooks", None):
                raise ValueError(
                    f"{type(self).__name__} must be installed before any other hook on {type(module).__name__} "
                    "(it would count the calls a cache skips): create it when the model loads"
                )
            add_hook(self.root, module, CountHook(self), self.hook_name)

    def counted(self, model: LoadedModel) -> list[nn.Module]:
        raise NotImplementedError

    def remove(self) -> None:
        remove_hook(self.root, self.hook_name)


class BlockCounter(Counter):
    """Counts transformer-block forward passes that really compute (the adapter's block groups)."""

    hook_name = "ditserve.block_counter"

    def counted(self, model: LoadedModel) -> list[nn.Module]:
        return [block for group in model.adapter.block_groups(model.transformer) for block in group.blocks]


class AttentionCounter(Counter):
    """Counts attention-layer forward passes that really compute (the adapter's `attention_layers`).

    Attention-level caches (PAB, FasterCache) reuse attention outputs inside blocks that still run, which
    a block count cannot show; a block a cache skips does not run its attention layers either."""

    hook_name = "ditserve.attention_counter"

    def counted(self, model: LoadedModel) -> list[nn.Module]:
        return list(model.adapter.attention_layers(model.transformer).values())
