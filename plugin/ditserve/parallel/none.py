"""No parallelism: the whole request runs in the serving process."""

from __future__ import annotations

from typing import Literal

from ditserve.parallel.base import ParallelConfig, ParallelRunner
from ditserve.registry import PARALLEL


class SingleProcessConfig(ParallelConfig):
    name: Literal["none"] = "none"


@PARALLEL.register("none")
class SingleProcess(ParallelRunner):
    """One process, no communication: the whole request runs in the serving process."""

    Config = SingleProcessConfig
