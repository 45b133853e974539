"""What a caching strategy is: a config, `apply` once at load, `reset` before every request.

A cache changes how the transformer's blocks run (it skips some and reuses cached features), so it
is applied to the loaded model through its family adapter (`model.adapter.block_groups(...)`), never
through a model's attribute names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ditserve.errors import PlanError
from ditserve.registry import Strategy, StrategyConfig

if TYPE_CHECKING:
    from pathlib import Path

    from ditserve.engine import Engine
    from ditserve.models.base import LoadedModel


class CacheConfig(StrategyConfig):
    """Base of cache configs."""


class CacheStrategy(Strategy):
    """A feature cache. Subclasses hold per-request state and must drop it in `reset`."""

    Config = CacheConfig
    needs_calibration: bool = False
    """True when the strategy needs `ditserve calibrate --cache NAME` before it can load."""
    families: tuple[str, ...] | None = None
    """The model families it runs on, where it names them (a U-Net cache: "unet"); None: every family whose adapter
    lists transformer blocks (every family but "unet"). Others are refused at load with a sentence: by
    `require_family`, or, for block caches, by the unet adapter's `block_streams`."""
    mixes_in_batch: bool = False
    """True when it decides per sample, so requests at different steps may share one model call (continuous
    batching, `ditserve.continuous`); a cache that decides for the whole call keeps its requests to batches of
    their own plan."""

    def apply(self, model: LoadedModel) -> None:
        """Install the cache on the loaded model (hooks, wrapped blocks)."""

    def reset(self) -> None:
        """Forget everything cached: called by the engine before every request and after a failure."""

    def remove(self) -> None:
        """Undo `apply`, leaving the model as it was loaded."""

    @classmethod
    def calibrate(cls, engine: Engine, samples: int, settings: dict[str, Any], directory: Path) -> dict[str, Any]:
        """Measure what the strategy needs on `engine`'s model (which runs uncached) with `samples`
        requests; return the config fields to store in the model's YAML (`ditserve calibrate`).
        `settings` are the strategy's fields already in the YAML (e.g. a threshold the calibration fits
        for); files it writes go to `directory`, the YAML's folder."""
        raise PlanError(f"cache {cls.name!r} needs no calibration")

    def require_family(self, model: LoadedModel) -> None:
        """Fail at load, saying what to pick instead, on a model of a family the cache does not run on (`families`).
        A cache that needs calibration asks this first, so that it does not send a U-Net to `ditserve calibrate`."""
        family = model.adapter.family
        if self.families is None and family == "unet":
            raise PlanError(
                f"cache {self.name!r} cannot run on the unet family (its blocks are U-Net stages, not transformer "
                "blocks): use cache 'deepcache' (or 'none') in plan.cache"
            )
        if self.families is not None and family not in self.families:
            raise PlanError(
                f"cache {self.name!r} runs on the {' and '.join(self.families)} family only; this model is {family}: "
                "pick another cache (e.g. fora) in plan.cache"
            )

    def require_calibration(self, field: str) -> None:
        """Fail at load, naming the command that fixes it, when the calibrated `field` is missing."""
        if getattr(self.config, field) is None:
            raise PlanError(
                f"cache {self.name!r} needs `{field}` from a calibration of this model: run "
                f"`ditserve calibrate --cache {self.name} --config <model.yaml>`, which writes it into plan.cache"
            )
