"""What a parallel runner is: a config, the world size it needs, and how it runs the model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ditserve.registry import Strategy, StrategyConfig

if TYPE_CHECKING:
    from ditserve.models.base import LoadedModel


class ParallelConfig(StrategyConfig):
    """Base of runner configs."""


class ParallelRunner(Strategy):
    """Splits the work of one request (or of many) over processes."""

    Config = ParallelConfig

    @property
    def world_size(self) -> int:
        """Processes this runner needs; 1 means it runs in the serving process."""
        return 1

    def apply(self, model: LoadedModel) -> None:
        """Prepare the loaded model for this runner (shard it, wrap its attention)."""
