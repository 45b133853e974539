"""Ulysses sequence parallelism (Jacobs et al., 2023, "DeepSpeed Ulysses").

Each rank holds a contiguous shard of the tokens with all heads. Around the attention product an
all-to-all trades that for all tokens of 1/N of the heads; attention runs locally on those heads; a
second all-to-all trades back. Exact (the same product, split by heads). Heads must divide by N.
Communication per attention, per rank: q, k, v and the output each cross once, 4·B·S·H·D/N elements
times (N-1)/N.
"""

from __future__ import annotations

import functools
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ditserve.parallel.distributed import DistributedConfig, DistributedRunner
from ditserve.registry import PARALLEL


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def ulysses_attention(q, k, v, group, comm, inner=local_attention) -> torch.Tensor:
    """(B, H, S/N, D) shards → attention over all S tokens → (B, H, S/N, D); `inner` runs on (B, H/N, S, D)."""
    n = group.size
    if n == 1:
        return inner(q, k, v)
    b, h, s, d = q.shape
    # (3, B, H, s, D) → (N, 3, B, H/N, s, D): slice j (head group j) goes to member j
    qkv = torch.stack([q, k, v]).reshape(3, b, n, h // n, s, d).permute(2, 0, 1, 3, 4, 5)
    qkv = comm.all_to_all(qkv, group)  # slice j now holds sequence shard j of my head group
    qkv = qkv.permute(1, 2, 3, 0, 4, 5).reshape(3, b, h // n, n * s, d)
    out = inner(qkv[0], qkv[1], qkv[2])
    # (B, H/N, N·s, D) → (N, B, H/N, s, D): sequence shard j goes back to member j
    out = out.reshape(b, h // n, n, s, d).permute(2, 0, 1, 3, 4)
    out = comm.all_to_all(out, group)  # slice j now holds head group j of my sequence shard
    return out.permute(1, 0, 2, 3, 4).reshape(b, h, s, d)


class UlyssesConfig(DistributedConfig):
    name: Literal["ulysses"] = "ulysses"
    AXES: ClassVar[tuple[str, ...]] = ("ulysses",)
    ulysses: int = Field(2, ge=2, le=64)
    """Ranks the sequence is sharded over; must divide the attention heads and the tokens."""


@PARALLEL.register("ulysses")
class Ulysses(DistributedRunner):
    """Ulysses: sequence shards, all-to-all to head shards around each self-attention (exact)."""

    Config = UlyssesConfig

    def attention(self, groups, comm, model):
        return lambda _layer: functools.partial(ulysses_attention, group=groups.sp, comm=comm)
