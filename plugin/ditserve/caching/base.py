"""What a caching strategy is: a config, `apply` once at load, `reset` before every request.

A cache changes how the transformer's blocks run (it skips some and reuses cached features), so it
is applied to the loaded model through its family adapter (`model.adapter.block_groups(...)`), never
through a model's attribute names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ditserve.registry import Strategy, StrategyConfig

if TYPE_CHECKING:
    from ditserve.models.base import LoadedModel


class CacheConfig(StrategyConfig):
    """Base of cache configs."""


class CacheStrategy(Strategy):
    """A feature cache. Subclasses hold per-request state and must drop it in `reset`."""

    Config = CacheConfig
    needs_calibration: bool = False
    """True when the strategy needs `ditserve calibrate --cache NAME` before it can load."""

    def apply(self, model: LoadedModel) -> None:
        """Install the cache on the loaded model (hooks, wrapped blocks)."""

    def reset(self) -> None:
        """Forget everything cached: called by the engine before every request and after a failure."""

    def remove(self) -> None:
        """Undo `apply`, leaving the model as it was loaded."""
