"""DBCache, "dual block cache" (cache-dit, vipshop 2025: github.com/vipshop/cache-dit).

What is cached: the residual of the middle blocks. Every step computes the first `front` blocks
(Fn) and the last `back` blocks (Bn); the middle ones are skipped when the output of the front
blocks moved little since the last full step: relative L1 of the front blocks' residual against the
one stored at the last full step below `threshold`. cache-dit compares that change with a fixed
threshold; here the threshold is stated for a step of 1/50 of the trajectory and scaled by the size
of the actual step (caching/trajectory.py), since the change over one step grows with the step: a
fixed 0.08 never opens the gate at 20 steps on digits-flow, and the scaled one skips a similar share
of blocks at 20, 28 and 50 steps with similar fidelity. When it is refreshed: at every step that fails
the gate, during `warmup` steps, and after `max_cached` skipped steps in a row. `threshold: 0`
computes every block (bit-identical to no caching). Decisions are per batch (one gate value for
the whole [cond; uncond] batch).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache, relative_l1
from ditserve.caching.trajectory import step_scale
from ditserve.registry import CACHES


class DBCacheConfig(CacheConfig):
    name: Literal["dbcache"] = "dbcache"
    threshold: float = Field(0.06, ge=0.0, le=10.0)
    """Skip the middle blocks when the front blocks' residual changed by less than this (relative L1) since
    the last full step; stated for a step of 1/50 of the trajectory, scaled by the actual step's size."""
    front: int = Field(1, ge=1, le=1000)
    """Fn: blocks computed first at every step; their residual is the gate's signal."""
    back: int = Field(0, ge=0, le=1000)
    """Bn: blocks computed last at every step, refining the cached middle's output."""
    warmup: int = Field(2, ge=0, le=1000)
    """Steps at the start that always compute."""
    max_cached: int = Field(2, ge=1, le=1000)
    """At most this many steps in a row skip the middle blocks."""


@CACHES.register("dbcache")
class DBCache(BlockCache):
    """DBCache: compute the first Fn and last Bn blocks; skip the middle when Fn's residual barely moved."""

    Config = DBCacheConfig

    def apply(self, model) -> None:
        super().apply(model)
        n = len(self.blocks)
        self.front = min(self.config.front, n)
        self.back = min(self.config.back, n - self.front)

    def reset(self) -> None:
        super().reset()
        self.signal: torch.Tensor | None = None
        self.run = 0
        self.skip_middle = False
        self.last_progress = 0.0

    def begin_call(self) -> None:
        self.skip_middle = False
        self.start: torch.Tensor | None = None
        self.step = self.progress - self.last_progress
        self.last_progress = self.progress

    def compute(self, index, block, args, kwargs) -> bool:
        if index < self.front or index >= len(self.blocks) - self.back:
            return True
        return not self.skip_middle

    def after_block(self, index, inputs, outputs) -> None:
        if index == 0:
            self.start = inputs["hidden_states"]
        if index != self.front - 1:
            return
        residual = outputs["hidden_states"] - self.start
        config = self.config
        gate_open = (
            self.signal is not None
            and self.call >= config.warmup
            and self.run < config.max_cached
            and relative_l1(residual, self.signal) < config.threshold * step_scale(self.step)
        )
        if gate_open:
            self.skip_middle, self.run = True, self.run + 1
        else:
            self.signal, self.run = residual, 0
