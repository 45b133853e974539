"""What a parallel runner is: a config, the world size it needs, and how it runs the model.

A runner of world size 1 runs in the serving process (`apply` prepares the model). A runner over
several processes is started by the engine at load (`check`, then `start`), runs every request
(`generate_batch`), reports whether its ranks are all still there (`alive`) and stops them (`close`);
`distributed.DistributedRunner` implements that part.
"""

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

    def check(self, model: LoadedModel) -> None:
        """Refuse, with the reason, a plan the model cannot take (raises `PlanError`)."""

    def start(self, config) -> None:
        """Start the ranks for the engine's `ModelConfig` (multi-process runners)."""
        raise NotImplementedError(f"runner {self.name!r} runs in the serving process")

    def generate_batch(self, engine, requests, on_progress, cancel, deadline):
        """Run `requests` on the ranks, as `Engine.generate_batch` does in one process."""
        raise NotImplementedError(f"runner {self.name!r} runs in the serving process")

    @property
    def alive(self) -> bool:
        """False once a rank has died or hung: the service must be restarted."""
        return True

    def close(self) -> None:
        """Stop the ranks, if any."""
