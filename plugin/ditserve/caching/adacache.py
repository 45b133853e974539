"""AdaCache: adaptive caching for faster video generation with diffusion transformers (Kahatapitiya et
al., 2024, arXiv 2411.02397).

What is cached: every block's residual. When it is refreshed: content-adaptively. After each full
step the rate of change of the features is measured — the relative L1 distance between the probe
block's residual now and at the previous full step, per reference step of 1/50 of the trajectory
(caching/trajectory.py) — and looked up in a codebook: the smaller the change, the longer the cache is
reused before the next full step. `codebook` maps rate thresholds (ascending) to reuse lengths in
reference steps; a rate above every threshold recomputes at the next step. The paper counts both per
step, which at fewer steps reads every rate as larger and every reuse as longer along the trajectory:
its codebook then never reuses at 20 steps on digits-flow. Stated against the trajectory, a reuse of
4 reference steps is 4 steps at 50 steps and 1 step at 20, the same stretch. The first `warmup` steps
always compute. An empty codebook computes every block (bit-identical to no caching). Decisions are
per batch (the paper decides per video).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache, relative_l1
from ditserve.caching.trajectory import REFERENCE_STEP, full_step_due
from ditserve.registry import CACHES


class AdaCacheConfig(CacheConfig):
    name: Literal["adacache"] = "adacache"
    codebook: list[tuple[float, int]] = Field(default=[(0.02, 4), (0.04, 3), (0.06, 2)], max_length=16)
    """(rate threshold, reuse length) pairs, thresholds ascending: a rate of change (relative L1 per 1/50 of
    the trajectory) below a threshold reuses the cache for that many fiftieths of the trajectory."""
    probe: int = Field(-1, ge=-1000, le=1000)
    """Index of the block whose residual measures the change (Python-style; −1 is the last)."""
    warmup: int = Field(2, ge=0, le=1000)
    """Steps at the start that always compute."""

    @field_validator("codebook")
    @classmethod
    def _ascending(cls, codebook):
        if [t for t, _ in codebook] != sorted(t for t, _ in codebook) or any(n < 1 for _, n in codebook):
            raise ValueError("thresholds must ascend and every reuse length be at least 1")
        return codebook


@CACHES.register("adacache")
class AdaCache(BlockCache):
    """AdaCache: after each full step, the features' rate of change picks how many steps reuse the cache."""

    Config = AdaCacheConfig

    def apply(self, model) -> None:
        super().apply(model)
        self.probe = self.config.probe % len(self.blocks)

    def reset(self) -> None:
        super().reset()
        self.reuse = 0
        self.probe_residual: torch.Tensor | None = None
        self.probe_progress = 0.0

    def begin_call(self) -> None:
        due = self.reuse == 0 or full_step_due(self.progress, self.probe_progress, (self.reuse + 1) * REFERENCE_STEP)
        self.full = self.call < self.config.warmup or due

    def compute(self, index, block, args, kwargs) -> bool:
        return self.full

    def after_block(self, index, inputs, outputs) -> None:
        if index != self.probe:
            return
        residual = self.residuals[index]["hidden_states"]
        self.reuse = 0
        if self.probe_residual is not None and self.progress > self.probe_progress:
            rate = relative_l1(residual, self.probe_residual) * REFERENCE_STEP / (self.progress - self.probe_progress)
            self.reuse = next((length for threshold, length in self.config.codebook if rate < threshold), 0)
        self.probe_residual, self.probe_progress = residual, self.progress
