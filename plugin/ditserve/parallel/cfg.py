"""CFG parallelism: the conditional and unconditional halves of a guided batch run on different ranks.

With classifier-free guidance the engine calls the model once per step on [cond; uncond] (2B rows).
On two cfg ranks each computes its own half (rank 0 the conditional rows, rank 1 the unconditional)
and an all-gather puts the 2B predictions back together, so the guidance combination and the sampler
see exactly the single-process batch. Communication per step: B rows of the model output per rank.
Without guidance there is one batch, which both ranks compute whole (no saving, still correct).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ditserve.parallel.distributed import DistributedConfig, DistributedRunner
from ditserve.registry import PARALLEL


def split_guidance(engine, group, comm):
    """Wrap the engine's adapter so each rank of `group` predicts its guidance branch; returns the undo."""
    adapter = engine.adapter
    condition, predict = adapter.condition, adapter.predict
    state = {"guided": False}

    def conditioned(model, prompts, guidance):
        state["guided"] = guidance
        return condition(model, prompts, guidance)

    def predicted(model, x, t, kwargs):
        if not state["guided"]:
            return predict(model, x, t, kwargs)
        rows = x.shape[0] // group.size
        mine = slice(group.rank * rows, (group.rank + 1) * rows)

        def half(value):
            return value[mine] if hasattr(value, "shape") and value.dim() and value.shape[0] == x.shape[0] else value

        out = predict(model, x[mine], half(t), {key: half(value) for key, value in kwargs.items()})
        return comm.all_gather(out, group, dim=0)

    adapter.condition, adapter.predict = conditioned, predicted

    def undo():
        del adapter.condition, adapter.predict  # back to the class's methods

    return undo


class CFGParallelConfig(DistributedConfig):
    name: Literal["cfg"] = "cfg"
    cfg: int = Field(2, ge=2, le=2)
    """The two guidance branches, one per rank."""


@PARALLEL.register("cfg")
class CFGParallel(DistributedRunner):
    """CFG parallel: the conditional and unconditional branches of guidance on two ranks."""

    Config = CFGParallelConfig
