"""SmoothCache: a universal inference acceleration technique for diffusion transformers (Liu et al., 2024,
arXiv 2411.10510).

What is cached: the residual of every block of a layer type. Layer types are the family adapter's
block groups (DiT and PixArt: one; Flux: dual- and single-stream; SD3: joint), since blocks are the
unit the engine counts and skips. When it is refreshed: `ditserve calibrate --cache smoothcache` runs
the model uncached and records, per layer type, the mean relative L1 change of the blocks' residuals
from step to step (the representation error curve). At run time each type accumulates the error the
curve predicts for each step (read against denoising progress, so other step counts work) and reuses
its cache while the sum stays at or below `alpha`; above it, its blocks compute and the sum restarts.
The first step always computes. `alpha: 0` computes every block (bit-identical to no caching).
Decisions are per batch.

Step counts: the cache adapts. The curve is a rate per unit of progress, so a step is charged the
error of the stretch it covers, and at fewer steps fewer steps in a row reuse; the paper instead
calibrates one schedule per step count. One step at 20 steps is charged about 0.2 on the embedded
models, hence the default alpha 0.25: at or below 0.2 nothing is ever reused at 20 steps.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache
from ditserve.caching.calibration import with_shipped_calibration
from ditserve.registry import CACHES


class SmoothCacheConfig(CacheConfig):
    name: Literal["smoothcache"] = "smoothcache"
    alpha: float = Field(0.25, ge=0.0, le=100.0)
    """Reuse a layer type's cache while its accumulated calibrated error stays at or below this."""
    errors: dict[str, list[float]] | None = None
    """Per layer type (block group), the calibrated step-to-step error curve; written by
    `ditserve calibrate --cache smoothcache`."""


@CACHES.register("smoothcache")
class SmoothCache(BlockCache):
    """SmoothCache: per-layer-type schedule from the calibrated step-to-step representation error."""

    Config = SmoothCacheConfig
    needs_calibration = True

    def apply(self, model) -> None:
        self.require_family(model)
        self.config = with_shipped_calibration(self.config, model)
        self.require_calibration("errors")
        super().apply(model)
        missing = sorted(set(self.group_of) - set(self.config.errors))
        if missing:
            from ditserve.errors import PlanError

            raise PlanError(
                f"cache 'smoothcache' has no calibrated errors for block group(s) {', '.join(missing)}: run "
                "`ditserve calibrate --cache smoothcache --config <model.yaml>` for this model"
            )

    def reset(self) -> None:
        super().reset()
        self.accumulated: dict[str, float] = {}
        self.skip: dict[str, bool] = {}
        self.last_progress = 0.0

    def begin_call(self) -> None:
        from ditserve.caching.calibration import predicted_change

        for group in dict.fromkeys(self.group_of):
            if self.call == 0:
                self.skip[group], self.accumulated[group] = False, 0.0
                continue
            total = self.accumulated[group] + predicted_change(
                self.config.errors[group], self.last_progress, self.progress
            )
            self.skip[group] = total <= self.config.alpha and self.config.alpha > 0
            self.accumulated[group] = total if self.skip[group] else 0.0
        self.last_progress = self.progress

    def compute(self, index, block, args, kwargs) -> bool:
        return not self.skip[self.group_of[index]]

    @classmethod
    def calibrate(cls, engine, samples: int, settings: dict | None = None, directory=None) -> dict[str, Any]:
        """Record each block's step-to-step residual change uncached; average it per layer type."""
        from ditserve.caching.calibration import block_change_curves

        curves = block_change_curves(engine, samples)
        groups = engine.adapter.block_groups(engine.model.transformer)
        errors, start = {}, 0
        for group in groups:
            end = start + len(group.blocks)
            errors[group.name] = [round(float(v), 6) for v in curves[:, start:end].mean(axis=1)]
            start = end
        return {"errors": errors}
