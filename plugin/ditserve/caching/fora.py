"""FORA: Fast-Forward Caching in Diffusion Transformer Acceleration (Selvaraju et al., 2024, arXiv 2407.01425).

What is cached: every block's residual (output − input, i.e. the gated sum of its attention and MLP
outputs). When it is refreshed: statically, after `warmup` calls that always compute, at full steps
spaced `spacing` of the denoising trajectory apart (see caching/trajectory.py); in between every block
adds its cached residual to its new input. The paper fixes the spacing in steps (its N); a cached
residual goes stale with the stretch of the trajectory it covers, so N = 3, tuned at 50 steps, loses
5–10 dB at 20 steps while the same stretch (every 2nd step there) holds. The default spacing 0.06 is
every 2nd step at 20–28 steps and every 3rd at 50. `interval` fixes N in steps instead, as the paper
does; `interval: 1` computes every block at every step (bit-identical to no caching). Decisions are
per batch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache
from ditserve.caching.trajectory import static_full_step
from ditserve.registry import CACHES


class ForaConfig(CacheConfig):
    name: Literal["fora"] = "fora"
    spacing: float = Field(0.06, gt=0.0, le=1.0)
    """Full steps are at least this much denoising progress (1 − t/t₀) apart; the steps between reuse the
    residuals. Holds its fidelity at any step count."""
    interval: int | None = Field(None, ge=1, le=100)
    """FORA's N: compute all blocks every `interval` steps instead of by `spacing` (the same N is a
    different setting at another step count)."""
    warmup: int = Field(0, ge=0, le=1000)
    """Steps at the start that always compute."""
    ends: float = Field(0.0, ge=0.0, lt=1.0)
    """How much denser full steps come at the start and end of the trajectory than in its middle
    (caching/trajectory.py: spacing shrinks to spacing/(1 + ends) there; 0: evenly spaced)."""


@CACHES.register("fora")
class Fora(BlockCache):
    """FORA: reuse every block's residual between full steps spaced evenly along the trajectory (static)."""

    Config = ForaConfig

    def reset(self) -> None:
        super().reset()
        self.last_full = 0.0

    def begin_call(self) -> None:
        config = self.config
        self.full = static_full_step(
            self.call, self.progress, self.last_full, config.warmup, config.interval, config.spacing, config.ends
        )
        if self.full:
            self.last_full = self.progress

    def compute(self, index, block, args, kwargs) -> bool:
        return self.full

    def skips_call(self) -> bool:
        return not self.full
