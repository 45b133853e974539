"""Block-level reuse: the machinery our own caches share (FORA, Δ-DiT, DBCache, TeaCache, AB-Cache, ...).

`BlockCache.apply` puts a hook (`ditserve.hooks`) on every block the family adapter lists (in execution
order, across all block groups), and a `DenoisingProgress` hook on the transformer that follows the
request's calls. For every block of every call the subclass decides `compute(i)`:

- computed: the block runs unchanged (so a strategy that computes every block is bit-identical to no
  caching) and its residual, output − input, is stored per stream (image tokens, and the text stream
  of dual-stream blocks, as the adapter's `block_streams` places them);
- skipped: the block does not run; it returns its input plus a `predict`ed residual (by default the
  stored one). Residuals telescope, so skipping a run of blocks whose residuals come from the same
  call adds exactly that run's deviation (Δ-DiT's "Δ-Cache").

A stream a block does not return (SD3's last joint block gives no text stream) stays absent.

A cache whose schedule skips whole calls (`skips_call`: FORA, AB-Cache) also stores, on a call that
computes a block group entirely, the group's residual (its last block's output − its first block's
input) under the group's key (`group_key`), and `predict`s it like a block's. On a call it skips, the
group's first block adds that one residual and the other blocks pass their input on: by telescoping
this is the sum of the blocks' residuals (up to rounding), at one addition per stream and call instead
of one per block, which on a cheap model is a visible share of a skipped call's time.
Decisions are made once per transformer call, so per batch: every sample of a batch, and both halves
of the [cond; uncond] classifier-free-guidance batch, compute or skip a block together.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from ditserve.caching.base import CacheStrategy
from ditserve.caching.progress import DenoisingProgress
from ditserve.hooks import add_hook, remove_hook
from ditserve.models.base import LoadedModel, block_argument

STREAMS = ("hidden_states", "encoder_hidden_states")


def relative_l1(new: torch.Tensor, old: torch.Tensor) -> float:
    """mean|new − old| / mean|old|: the change measure of TeaCache, FBCache and DBCache."""
    return ((new - old).abs().mean() / old.abs().mean().clamp_min(1e-12)).item()


class BlockHook(ModelHook):
    """On block `index`: runs it, or stands in for it, as its cache decides."""

    def __init__(self, cache: BlockCache, index: int) -> None:
        super().__init__()
        self.cache = cache
        self.index = index

    def new_forward(self, module: nn.Module, *args, **kwargs):
        return self.cache.forward_block(self.index, module, self.fn_ref.original_forward, args, kwargs)


class BlockCache(CacheStrategy):
    """Base of caches that skip whole blocks and reuse their residuals. Subclasses decide `compute`."""

    model: LoadedModel | None = None

    @property
    def hook_name(self) -> str:
        """The name of this cache's hooks on the blocks and the transformer."""
        return f"ditserve.{type(self).__name__}"

    def apply(self, model: LoadedModel) -> None:
        self.model = model
        groups = model.adapter.block_groups(model.transformer)
        self.blocks: list[nn.Module] = [block for group in groups for block in group.blocks]
        self.group_of: list[str] = [group.name for group in groups for _ in group.blocks]
        self._streams = [model.adapter.block_streams(block) for block in self.blocks]
        spans: dict[str, list[int]] = {}
        for index, name in enumerate(self.group_of):
            spans.setdefault(name, []).append(index)
        self._group_index = {name: number for number, name in enumerate(spans)}
        self._first_of_group = {indices[0] for indices in spans.values()}
        self._last_of_group = {indices[-1] for indices in spans.values()}
        self.calls = DenoisingProgress(self._begin_call)
        self.reset()
        for index, block in enumerate(self.blocks):
            add_hook(model.transformer, block, BlockHook(self, index), self.hook_name)
        add_hook(model.transformer, model.transformer, self.calls, self.hook_name)

    def remove(self) -> None:
        if self.model is not None:  # None: `apply` refused before it reached the model
            remove_hook(self.model.transformer, self.hook_name)

    @property
    def call(self) -> int:
        """Index of the current transformer call in this request (one call per step with batched CFG)."""
        return self.calls.call

    @property
    def progress(self) -> float:
        """How far the request is from the first call's noise level: 1 − t/t₀, in [0, 1]."""
        return self.calls.progress

    def reset(self) -> None:
        self.calls.reset()
        self.residuals: dict[int, dict[str, torch.Tensor]] = {}
        self.computed_at: dict[int, int] = {}
        """Block index → the call whose residual is stored."""
        self._layout: dict[int, Any] = {}
        self._skipping = False
        self._group_inputs: dict[str, torch.Tensor] | None = None
        """The current group's input while every block of it computed so far in this call."""

    def _begin_call(self) -> None:
        self.begin_call()
        self._skipping = self.skips_call()

    # -- what subclasses override ---------------------------------------------------------------

    def begin_call(self) -> None:
        """Called once per transformer call, after `call` and `progress` are updated."""

    def compute(self, index: int, block: nn.Module, args: tuple, kwargs: dict) -> bool:
        """Whether block `index` runs in this call (default: always)."""
        return True

    def after_block(self, index: int, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        """Called after a computed block, with its input and output per stream."""

    def predict(self, index: int) -> dict[str, torch.Tensor]:
        """The residual a skipped block (or block group, `group_key`) adds to its input (default: the stored one)."""
        return self.residuals[index]

    def skips_call(self) -> bool:
        """Whether the current call (after `begin_call`) skips every block; then each group's residual is
        added once (see the module docstring). Only for caches whose `predict` of a group's key is the sum
        of its blocks' predictions: a linear function of stored residuals, the same for every block."""
        return False

    @staticmethod
    def group_key(group: int) -> int:
        """The key group `group`'s own residual (and whatever a subclass keeps per block) is stored under."""
        return -1 - group

    # -- machinery ------------------------------------------------------------------------------

    def _inputs(self, index: int, block: nn.Module, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        streams = self._streams[index]
        inputs = {"hidden_states": block_argument(block, streams.hidden_states_argument_name, args, kwargs)}
        if streams.return_encoder_hidden_states_index is not None:
            inputs["encoder_hidden_states"] = block_argument(
                block, streams.encoder_hidden_states_argument_name, args, kwargs
            )
        return inputs

    def _outputs(self, index: int, output: Any) -> dict[str, torch.Tensor]:
        streams = self._streams[index]
        if isinstance(output, torch.Tensor):
            return {"hidden_states": output}
        found = {"hidden_states": output[streams.return_hidden_states_index]}
        if streams.return_encoder_hidden_states_index is not None:
            found["encoder_hidden_states"] = output[streams.return_encoder_hidden_states_index]
        return found

    def _rebuild(self, index: int, values: dict[str, torch.Tensor | None]) -> Any:
        """An output shaped like the block's own (a tensor, or a tuple in the block's order)."""
        layout = self._layout[index]
        if layout is None:
            return values["hidden_states"]
        streams = self._streams[index]
        output: list[Any] = [None] * layout
        output[streams.return_hidden_states_index] = values["hidden_states"]
        if streams.return_encoder_hidden_states_index is not None:
            output[streams.return_encoder_hidden_states_index] = values.get("encoder_hidden_states")
        return tuple(output)

    def forward_block(self, index: int, block: nn.Module, forward, args: tuple, kwargs: dict) -> Any:
        """Block `index`'s output for this call: `forward` run, or its input plus the predicted residual."""
        inputs = self._inputs(index, block, args, kwargs)
        group = self.group_key(self._group_index[self.group_of[index]])
        if self._skipping and group in self.residuals and index in self.residuals:
            own = self.residuals[index]  # the streams this block returns
            added = self.predict(group) if index in self._first_of_group else {}
            values = {name: value + added[name] if name in added else value for name, value in inputs.items()}
            return self._rebuild(index, {name: values[name] if name in own else None for name in inputs})
        wanted = self.compute(index, block, args, kwargs)
        if wanted or index not in self.residuals:
            if index in self._first_of_group:
                self._group_inputs = inputs
            output = forward(*args, **kwargs)
            outputs = self._outputs(index, output)
            self._layout[index] = None if isinstance(output, torch.Tensor) else len(output)
            self.residuals[index] = self._residual(inputs, outputs)
            self.computed_at[index] = self.call
            self.after_block(index, inputs, outputs)
            if index in self._last_of_group and self._group_inputs is not None:
                self._store_group(group, outputs)
            return output
        self._group_inputs = None
        residual = self.predict(index)
        values = {name: inputs[name] + residual[name] if name in residual else None for name in inputs}
        return self._rebuild(index, values)

    @staticmethod
    def _residual(inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        return {name: out - inputs[name] for name, out in outputs.items() if out is not None and name in inputs}

    def _store_group(self, group: int, outputs: dict[str, torch.Tensor | None]) -> None:
        """Keep a group every block of which computed in this call as one residual, for calls that skip it."""
        if type(self).skips_call is not BlockCache.skips_call:  # only caches that skip whole calls use it
            self.residuals[group] = self._residual(self._group_inputs, outputs)
            self.after_block(group, self._group_inputs, outputs)
        self._group_inputs = None
