"""CFG parallelism alone: the conditional and unconditional halves of a guided batch on two ranks.

The technique is the hook in `guidance.py`, which every runner installs when its `cfg` degree is 2; this
runner is that degree and nothing else (with `dp` replicas, if given). Exact: the guidance combination and
the sampler see the single-process batch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ditserve.parallel.distributed import DistributedConfig, DistributedRunner
from ditserve.registry import PARALLEL


class CFGParallelConfig(DistributedConfig):
    name: Literal["cfg"] = "cfg"
    cfg: int = Field(2, ge=2, le=2)
    """The two guidance branches, one per rank."""


@PARALLEL.register("cfg")
class CFGParallel(DistributedRunner):
    """CFG parallel: the conditional and unconditional branches of guidance on two ranks."""

    Config = CFGParallelConfig
