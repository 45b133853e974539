"""The engine's evaluation counters: transformer blocks, attention layers and tokens that really compute.

A counter is a hook (`ditserve.hooks`) on every block, every attention layer, or every token layer, that the
family adapter lists. It is installed when the model loads, before any cache, so it sits innermost: a cache's
hook registered later wraps it, and a block or layer the cache skips never reaches it. Installing a
counter on a module that already has hooks other than counters' would count calls a cache skips, so that is
refused.
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
        self.counter.count += self.units(args, kwargs)
        return args, kwargs

    def units(self, args: tuple, kwargs: dict) -> int:
        """What one call adds to the count: one call."""
        return 1


class TokenCountHook(CountHook):
    """Adds the tokens of every call that reaches the module's own `forward`: the rows of its input
    (`hidden_states`, the first argument), batch × sequence — the query tokens, for an attention layer."""

    def units(self, args: tuple, kwargs: dict) -> int:
        states = args[0] if args else kwargs["hidden_states"]
        return states.shape[:-1].numel()


class Counter:
    """Counts forward passes of a set of modules that really compute."""

    hook_name: ClassVar[str]
    hook_class: ClassVar[type[CountHook]] = CountHook

    def __init__(self, model: LoadedModel) -> None:
        self.count = 0
        self.root = model.transformer
        for module in self.counted(model):
            hooks = getattr(getattr(module, "_diffusers_hook", None), "hooks", {})
            if any(not isinstance(hook, CountHook) for hook in hooks.values()):  # another counter's is fine
                raise ValueError(
                    f"{type(self).__name__} must be installed before any other hook on {type(module).__name__} "
                    "(it would count the calls a cache skips): create it when the model loads"
                )
            add_hook(self.root, module, self.hook_class(self), self.hook_name)

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


class TokenCounter(Counter):
    """Counts tokens that really compute in the token layers of every block: the adapter's attention layers and
    the blocks' feed-forward networks (diffusers' `FeedForward`), each call adding batch × tokens it was given.

    Token-level caches (ToCa, DuCa) run a layer on the tokens they pick only, or reuse its whole output, inside
    blocks that run; a block they recompute 30% of the tokens of counts 0.3 of its full tokens here, where the
    block count shows it computed. A block a block cache skips runs none of its layers."""

    hook_name = "ditserve.token_counter"
    hook_class = TokenCountHook

    def counted(self, model: LoadedModel) -> list[nn.Module]:
        return token_layers(model)


def token_layers(model: LoadedModel) -> list[nn.Module]:
    """The layers whose cost grows with the tokens they are given, in every block: attention layers (the
    adapter's) and feed-forward networks, in module order."""
    from diffusers.models.attention import FeedForward

    attention = {id(layer) for layer in model.adapter.attention_layers(model.transformer).values()}
    blocks = [block for group in model.adapter.block_groups(model.transformer) for block in group.blocks]
    return [m for block in blocks for m in block.modules() if id(m) in attention or isinstance(m, FeedForward)]
