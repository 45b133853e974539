"""DistriFusion (Li et al., 2024, "DistriFusion: Distributed Parallel Inference for High-Resolution
Diffusion Models"): patch parallelism with the previous step's activations for the other patches.

Each rank denoises its own patch of tokens (a contiguous shard, as in sequence parallelism). In
every self-attention its queries attend to its own fresh keys/values and to the other patches'
keys/values from the previous step, which arrive by an asynchronous all-gather started one step
earlier, so the communication overlaps a whole step of computation. Inputs change little between
adjacent denoising steps, which is why stale keys/values cost little fidelity.

Warm-up: the first `warmup_steps` calls of each self-attention gather fresh keys/values synchronously
(exact, like sequence parallelism with an all-gather); staleness starts after them. The default of 4 is a
choice made here on the digits model (the fidelity test measures it), not a figure from the paper.
Communication per attention per step, per rank: its k and v once to every other rank,
2·(N-1)·B·S·H·D/N elements, hidden behind the next step.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from pydantic import Field

from ditserve.parallel.distributed import DistributedConfig, DistributedRunner
from ditserve.parallel.groups import Degrees
from ditserve.parallel.ulysses import local_attention
from ditserve.registry import PARALLEL


class StaleKVAttention:
    """The distributed attention of one rank: fresh local k/v, the previous step's k/v for other patches.

    Kept per self-attention layer (`self(layer)` is layer `layer`'s attention): its steps are the calls in
    which that layer computed, so a cache that skips some blocks of a call leaves every layer its own."""

    def __init__(self, group, comm, warmup_steps: int) -> None:
        self.group, self.comm, self.warmup_steps = group, comm, warmup_steps
        self.reset()

    def reset(self) -> None:
        """Forget the previous request's activations (called before every request)."""
        self.steps: dict[int, int] = {}
        self.pending: dict[int, tuple[list[torch.Tensor], object]] = {}

    def __call__(self, layer: int):
        return functools.partial(self.attend, layer)

    def attend(self, layer: int, q, k, v) -> torch.Tensor:
        step = self.steps.get(layer, 0)
        self.steps[layer] = step + 1
        kv = torch.stack([k, v])
        if step < self.warmup_steps:
            parts, work = self.comm.all_gather_async(kv, self.group)
            work.wait()
        else:
            parts, work = self.pending.pop(layer)
            work.wait()
            parts[self.group.rank] = kv  # this patch's own keys/values are always fresh
        full = torch.cat(parts, dim=3)  # (2, B, H, S, D)
        if step == self.warmup_steps - 1:  # the first stale step reads this step's fresh activations
            self.pending[layer] = (parts, _Done())
        elif step >= self.warmup_steps:  # the next step reads these, gathered while it computes
            self.pending[layer] = self.comm.all_gather_async(kv, self.group)
        return local_attention(q, full[0], full[1])


class _Done:
    """A finished work handle (the last warm-up step's gather is already complete)."""

    def wait(self) -> None:
        pass


class DistriFusionConfig(DistributedConfig):
    name: Literal["distrifusion"] = "distrifusion"
    patches: int = Field(2, ge=2, le=64)
    """Ranks, one patch (contiguous token shard) each."""
    warmup_steps: int = Field(4, ge=1, le=1000)
    """Transformer calls at the start of a request that exchange fresh activations synchronously."""

    def degrees(self) -> Degrees:
        return Degrees(ring=self.patches, cfg=self.cfg, dp=self.dp)


@PARALLEL.register("distrifusion")
class DistriFusion(DistributedRunner):
    """DistriFusion: patch parallel, the other patches' keys/values from the previous step, overlapped."""

    Config = DistriFusionConfig

    def attention(self, groups, comm, model):
        return StaleKVAttention(groups.sp, comm, self.config.warmup_steps)
