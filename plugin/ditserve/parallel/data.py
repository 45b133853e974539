"""Data parallelism: the requests batched together are spread over replicas, each a full copy of the model.

Every image keeps its own seed and noise generator, so a request gets the images it would get in one
process; replicas only change which process computes it. The executor gives replica r the requests
r, r + dp, r + 2·dp, ... of a batch (`ranks.replica_share`) and gathers the results back in request order.
A request is never split, so one request alone keeps one replica busy. Nothing is installed on the model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ditserve.parallel.distributed import DistributedConfig, DistributedRunner
from ditserve.registry import PARALLEL


class DataParallelConfig(DistributedConfig):
    name: Literal["data"] = "data"
    dp: int = Field(2, ge=2, le=64)
    """Replicas of the model, each serving its share of a batch of requests."""


@PARALLEL.register("data")
class DataParallel(DistributedRunner):
    """Data parallel: different requests of a batch on different replicas of the model."""

    Config = DataParallelConfig
