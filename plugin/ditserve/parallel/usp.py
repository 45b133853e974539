"""USP, unified sequence parallelism (Fang & Zhao, 2024): Ulysses inside, Ring across.

The sp group (ulysses × ring ranks) is a grid: Ulysses groups are consecutive ranks (xfuser's
`use_ulysses_low`), ring groups the ranks with the same Ulysses index. The all-to-all turns a rank's
shard into all the tokens of its Ulysses group for 1/U of the heads; ring attention then runs over the
ring group on those heads. Exact. Heads must divide by `ulysses`, tokens by `ulysses × ring`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ditserve.parallel.distributed import DistributedConfig, DistributedRunner
from ditserve.parallel.ring import ring_attention
from ditserve.parallel.ulysses import ulysses_attention
from ditserve.registry import PARALLEL


class USPConfig(DistributedConfig):
    name: Literal["usp"] = "usp"
    AXES: ClassVar[tuple[str, ...]] = ("ulysses", "ring")
    ulysses: int = Field(2, ge=1, le=64)
    """Ulysses degree (divides the heads)."""
    ring: int = Field(2, ge=1, le=64)
    """Ring degree."""


@PARALLEL.register("usp")
class USP(DistributedRunner):
    """USP: Ulysses all-to-all inside, ring attention across (exact); xDiT's sequence parallelism."""

    Config = USPConfig

    def attention(self, groups, comm, model):
        def attention(q, k, v):
            return ulysses_attention(
                q, k, v, groups.ulysses, comm, lambda *qkv: ring_attention(*qkv, groups.ring, comm)
            )

        return (lambda _layer: attention) if self.degrees.sp > 1 else None
