"""CFG parallelism's hook: each rank of the cfg group computes its share of the batch rows of a transformer call.

With classifier-free guidance the engine calls the transformer on [cond; uncond] (2B rows). On the two
ranks of a cfg group, rank 0 computes the first half (the conditional rows) and rank 1 the second (the
unconditional ones); an all-gather of the outputs puts the 2B rows back together in order, so the guidance
combination and the sampler see exactly the single-process batch. Any call whose rows divide by the group
size is split the same way (rows are independent), so an unguided batch of 2 images is shared too; a call
whose rows do not divide is computed whole on every rank (correct, no saving). Communication per call:
B rows of the transformer's output per rank.

A diffusers `ModelHook` on the transformer, registered as `CFG_SPLIT_HOOK`: it cuts the arguments before
the model's own forward and gathers the output after it, so any hook inside the transformer (sequence
sharding, caches, counters) sees only this rank's rows.
"""

from __future__ import annotations

import torch
from diffusers.hooks import ModelHook

from ditserve.hooks import add_hook, remove_hook

CFG_SPLIT_HOOK = "ditserve.cfg_split"


class CFGSplitHook(ModelHook):
    """Computes this rank's rows of every transformer call and gathers everyone's."""

    def __init__(self, group, comm) -> None:
        super().__init__()
        self.group, self.comm = group, comm
        self.split = False

    def pre_forward(self, module, *args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        rows, size = x.shape[0], self.group.size
        self.split = rows % size == 0 and rows >= size
        if not self.split:
            return args, kwargs
        mine = slice(self.group.rank * rows // size, (self.group.rank + 1) * rows // size)

        def cut(value):
            return value[mine] if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows else value

        return tuple(cut(value) for value in args), {key: cut(value) for key, value in kwargs.items()}

    def post_forward(self, module, output):
        if not self.split:
            return output
        if isinstance(output, tuple):
            return (self.comm.all_gather(output[0], self.group, dim=0), *output[1:])
        output.sample = self.comm.all_gather(output.sample, self.group, dim=0)
        return output


def apply_cfg_split(transformer: torch.nn.Module, group, comm) -> None:
    """Make `transformer` compute only this rank's rows of `group` in every call (undo: `remove_cfg_split`)."""
    add_hook(transformer, transformer, CFGSplitHook(group, comm), CFG_SPLIT_HOOK)


def remove_cfg_split(transformer: torch.nn.Module) -> None:
    remove_hook(transformer, CFG_SPLIT_HOOK)
