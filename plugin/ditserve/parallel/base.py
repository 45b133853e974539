"""What a parallel runner is: a config, the world size it needs, what it checks at load and what it changes.

A runner is applied in every rank, like a cache or a quantizer: `apply(model, placement)` installs its
hooks on that rank's model, `reset` clears its per-request state, `remove` takes the hooks off again.
Starting, feeding and watching the ranks is the executor's job (`parallel/executor.py`), not the
runner's: a runner never calls back into the engine or the serving process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ditserve.registry import Strategy, StrategyConfig

if TYPE_CHECKING:
    from ditserve.config import AccelPlan
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

    def check(self, model: LoadedModel, plan: AccelPlan) -> None:
        """Refuse, at load and with the numbers, a plan the model cannot take (raises `PlanError`). Runs in the
        serving process on a model without weights (`executor.weightless`), so it reads shapes only."""

    def check_size(self, model: LoadedModel, height: int, width: int) -> None:
        """Refuse a request size this runner cannot cut (raises `RequestError`), before any rank sees it."""

    def check_frames(self, model: LoadedModel, frames: int) -> None:
        """Refuse a video's frame count this runner cannot cut (raises `RequestError` on `num_frames`), before
        any rank sees it; called for video models only."""

    def apply(self, model: LoadedModel, placement) -> None:
        """Install this runner's share of the work on one rank's model (`placement`: its process groups)."""

    def reset(self) -> None:
        """Forget the previous request's state (called before every request)."""

    def remove(self) -> None:
        """Take every hook `apply` installed off the model again."""
