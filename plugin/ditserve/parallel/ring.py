"""Ring attention (Liu et al., 2023, "Ring Attention with Blockwise Transformers").

Each rank keeps its query shard and passes its key/value shard round the ring; after N-1 shifts every
query has met every key. Each partial result comes with the log-sum-exp of its scores, and partials
merge exactly: out = Σ_j exp(lse_j − lse)·out_j with lse = logsumexp_j(lse_j). The per-block attention
with its LSE is `ditserve_kernels.ring_attention` (Triton on GPU, its torch reference on CPU). The next shift is in
flight while the current block is computed. Communication per attention, per rank: (N-1) shifts of
its k and v, 2·(N-1)·B·S·H·D/N elements. No head constraint.
"""

from __future__ import annotations

import functools
from typing import ClassVar, Literal

import torch
from pydantic import Field

from ditserve.parallel.distributed import DistributedConfig, DistributedRunner
from ditserve.registry import PARALLEL


def merge(out, lse, block_out, block_lse):
    """Combine two partial attentions over disjoint keys into the attention over their union."""
    if out is None:
        return block_out, block_lse
    new_lse = torch.logaddexp(lse, block_lse)
    return out * torch.exp(lse - new_lse) + block_out * torch.exp(block_lse - new_lse), new_lse


def ring_attention(q, k, v, group, comm) -> torch.Tensor:
    """Attention of the local queries over the keys/values of every member of `group`."""
    from ditserve_kernels.ring_attention import attention_with_lse  # Triton is imported on first use only

    kv = torch.stack([k, v])
    out = lse = None
    for step in range(group.size):
        pending = comm.shift(kv, group) if step < group.size - 1 else None
        out, lse = merge(out, lse, *attention_with_lse(q, kv[0], kv[1]))
        if pending is not None:
            kv, works = pending
            for work in works:
                work.wait()
    return out.to(q.dtype)


class RingConfig(DistributedConfig):
    name: Literal["ring"] = "ring"
    AXES: ClassVar[tuple[str, ...]] = ("ring",)
    ring: int = Field(2, ge=2, le=64)
    """Ranks in the ring; must divide the tokens."""


@PARALLEL.register("ring")
class Ring(DistributedRunner):
    """Ring attention: key/value shards passed round the ring, partials merged by log-sum-exp (exact)."""

    Config = RingConfig

    def attention(self, groups, comm, model):
        return lambda _layer: functools.partial(ring_attention, group=groups.sp, comm=comm)
