"""MagCache: "MagCache: Fast Video Generation with Magnitude-Aware Cache" (Ma et al., 2025, arXiv 2506.09045)
— a wrapper of diffusers' `MagCacheConfig` hooks (github.com/Zehong-Ma/MagCache).

What is cached: the residual of the whole block stack (last block's output − first block's input). When it
is refreshed: the magnitude of that residual changes between steps by a ratio that is nearly the same for
every prompt of a model (the paper's "unified magnitude law"), so it is recorded once per model: the mean
ratio ‖r_t‖/‖r_{t−1}‖ of each step. While a step's accumulated error Σ|1 − Π ratios| since the last full
step stays within `threshold`, and at most `max_skip_steps` steps in a row, the step adds the cached
residual to block 0's input and runs no block. The first `retention` of the trajectory always computes.
`max_skip_steps: 0` computes every step (bit-identical to no caching). Decisions are per batch.

Calibration is diffusers' own (its hooks' `calibrate` mode records the ratios), run on the checkpoint's
calibration prompts through `ditserve calibrate --cache magcache` or shipped in `calibration/magcache.json`;
without it the cache refuses to load. diffusers indexes the ratios by step and stretches a curve recorded
at S steps to another count by nearest neighbour, which reads a 50-step ratio as a 20-step one although a
larger step changes the residual more. Here the calibration keeps each ratio's denoising progress, and a
request's ratio for the step from progress p′ to p is exp(M(p) − M(p′)), M the recorded cumulative log
magnitude interpolated in progress: at the calibrated schedule this is the recorded ratio, at other step
counts the magnitude change the trajectory makes over that step. The hooks get the ratio of each call
just before it runs; `retention` is a fraction of progress rather than of the step count.

Families: diffusers' hooks find the transformer's block lists themselves; every transformer family runs.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ditserve.caching.base import CacheConfig
from ditserve.caching.calibration import with_shipped_calibration
from ditserve.caching.diffusers_hooks import DiffusersHookCache
from ditserve.caching.trajectory import TOLERANCE
from ditserve.errors import PlanError
from ditserve.registry import CACHES

CALIBRATION_STEPS = 50
"""The step count of calibration requests: the finest curve, which coarser requests read by progress."""
NEVER = 10**9
"""The hooks' `num_inference_steps`: they reset themselves at that step, which the wrapper never reaches
(it resets them before every request instead, whatever the request's step count)."""


class MagCacheConfig(CacheConfig):
    name: Literal["magcache"] = "magcache"
    threshold: float = Field(0.06, ge=0.0, le=10.0)
    """Skip a step while the error accumulated since the last full step, Σ|1 − Π magnitude ratios|, stays
    within this (the paper's δ; diffusers' default)."""
    max_skip_steps: int = Field(3, ge=0, le=100)
    """At most this many steps in a row reuse the residual (the paper's K); 0 computes every step."""
    retention: float = Field(0.2, ge=0.0, le=1.0)
    """The first this fraction of denoising progress always computes (the paper's retention ratio)."""
    ratios: list[float] | None = Field(None, min_length=2, max_length=1000)
    """Mean magnitude ratio of the block stack's residual at each calibration step (1.0 first); written by
    `ditserve calibrate --cache magcache`."""
    progress: list[float] | None = Field(None, min_length=2, max_length=1000)
    """The denoising progress (1 − t/t₀) of each entry of `ratios`."""

    @model_validator(mode="after")
    def _paired(self) -> MagCacheConfig:
        if (self.ratios is None) != (self.progress is None) or len(self.ratios or ()) != len(self.progress or ()):
            raise ValueError("ratios and progress come together from a calibration, one progress per ratio")
        if self.ratios is not None and min(self.ratios) <= 0:
            raise ValueError("magnitude ratios are positive")
        return self


@CACHES.register("magcache")
class MagCache(DiffusersHookCache):
    """MagCache: skip steps while the calibrated magnitude ratios of the residual stay close to 1 (diffusers' hooks)."""

    Config = MagCacheConfig
    needs_calibration = True
    hook_names = ("mag_cache_leader_block_hook", "mag_cache_block_hook")
    recording = False
    """Whether the hooks run in diffusers' calibrate mode (every step computes, ratios are recorded)."""

    def apply(self, model) -> None:
        self.require_family(model)
        if not self.recording:
            self.config = with_shipped_calibration(self.config, model)
            self.require_calibration("ratios")
            self.magnitude = np.cumsum(np.log(self.config.ratios))
        super().apply(model)

    def install(self, model) -> None:
        from diffusers.hooks import MagCacheConfig as LibraryConfig
        from diffusers.hooks import apply_mag_cache

        config = self.config
        self.library = LibraryConfig(
            threshold=config.threshold,
            max_skip_steps=config.max_skip_steps,
            retention_ratio=0.0,
            num_inference_steps=NEVER,
            calibrate=True,  # constructed without ratios: they are filled call by call (`_set_context`)
        )
        self.library.calibrate = self.recording
        self.library.mag_ratios = []
        apply_mag_cache(model.transformer, self.library)
        registries = [getattr(module, "_diffusers_hook", None) for module in model.transformer.modules()]
        heads = [r.get_hook(self.hook_names[0]) for r in registries if r and r.get_hook(self.hook_names[0])]
        self.head = heads[0] if heads else None
        if self.head is None:
            raise PlanError(
                f"cache 'magcache': diffusers' hooks found no block list on this {model.adapter.family} transformer "
                "(they look for transformer_blocks, single_transformer_blocks, blocks, layers); pick a cache that "
                "uses the family adapter's blocks (e.g. fora) in plan.cache"
            )
        self.previous_progress = 0.0
        self.seen = []

    def reset(self) -> None:
        super().reset()
        self.library.mag_ratios.clear()
        self.previous_progress = 0.0
        self.seen: list[float] = []
        """The progress of every call of the request (what a calibration stores beside the ratios)."""

    def _set_context(self) -> None:
        super()._set_context()
        progress = self.calls.progress
        self.seen.append(progress)
        if not self.recording:
            first = self.calls.call == 0
            self.library.mag_ratios.append(1.0 if first else self.ratio(self.previous_progress, progress))
        self.previous_progress = progress

    def ratio(self, previous: float, now: float) -> float:
        """The magnitude ratio the calibration predicts for the step from progress `previous` to `now`; inside
        the retention one the hooks always compute at (any ratio farther from 1 than `threshold` allows)."""
        if now < self.config.retention - TOLERANCE:
            return 2.0 + self.config.threshold
        grid = self.config.progress
        return math.exp(float(np.interp(now, grid, self.magnitude) - np.interp(previous, grid, self.magnitude)))

    @classmethod
    def calibrate(cls, engine, samples: int, settings: dict | None = None, directory=None) -> dict[str, Any]:
        """Record `ratios` and `progress` with diffusers' hooks in calibrate mode on `samples` uncached requests
        of `CALIBRATION_STEPS` steps (the checkpoint's calibration prompts), averaged over the requests."""
        from ditserve.caching.calibration import per_request

        recorder = type("MagCacheRecorder", (cls,), {"recording": True})(MagCacheConfig())

        def collect() -> tuple[list[float], list[float]]:
            return list(recorder.head.state_manager.get_state().calibration_ratios), list(recorder.seen)

        runs = per_request(engine, recorder, samples, collect, [CALIBRATION_STEPS])
        ratios = np.mean([r for r, _ in runs], axis=0)
        progress = np.mean([p for _, p in runs], axis=0)
        return {"ratios": [float(r) for r in ratios], "progress": [float(p) for p in progress]}
