"""AB-Cache: training-free acceleration of diffusion models via Adams–Bashforth cached feature reuse
(Yu et al., 2025, arXiv 2504.10540).

What is cached: each block's residual at its last three full steps. When it is refreshed: after
`warmup` full steps, at full steps spaced `spacing` of the denoising trajectory apart, as FORA's
(caching/fora.py, caching/trajectory.py: an extrapolated residual goes stale with the stretch of the
trajectory it covers, so a spacing fixed in steps would lose fidelity at fewer steps; the default is
every 2nd step at 20 steps, every 3rd at 28, every 4th at 50); `interval` fixes it in steps instead. In between, a
block's residual is extrapolated with the Adams–Bashforth rule of order up to `order` over the full
steps' history, treating features as the solution of an ODE in the step index: with d_k the finite
difference per step between stored residuals, r(s) = r_n + (s − s_n)·(3/2·d_n − 1/2·d_{n−1})
(order 2), r_n + (s − s_n)·d_n (order 1), r_n (order 0, FORA). `interval: 1` computes every block
(bit-identical to no caching). Decisions are per batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ditserve.caching.fora import Fora, ForaConfig
from ditserve.registry import CACHES


class ABCacheConfig(ForaConfig):
    """FORA's schedule (spacing, interval, warm-up, ends) with its own defaults, and the extrapolation's order."""

    name: Literal["ab-cache"] = "ab-cache"
    spacing: float = Field(0.08, gt=0.0, le=1.0)
    """Full steps are at least this much denoising progress (1 − t/t₀) apart; the steps between extrapolate
    the residuals. Holds its fidelity at any step count."""
    warmup: int = Field(2, ge=0, le=1000)
    """Steps at the start that always compute (they also fill the history)."""
    order: int = Field(2, ge=0, le=2)
    """Adams–Bashforth order of the extrapolation (0 reuses the last residual as FORA does). The higher orders
    help where full steps are close (the default spacing); over long gaps between full steps (spacing ≳ 0.15)
    a second-order extrapolation overshoots and loses to plain reuse: use order 1 or 0 there."""


@CACHES.register("ab-cache")
class ABCache(Fora):
    """AB-Cache: extrapolate every block's residual from its last full steps (Adams–Bashforth).

    FORA's schedule of full steps; where FORA reuses the last residual, AB-Cache extrapolates it."""

    Config = ABCacheConfig

    def reset(self) -> None:
        super().reset()
        self.history: dict[int, list[tuple[int, dict[str, torch.Tensor]]]] = {}

    def after_block(self, index, inputs, outputs) -> None:
        if self.config.order:
            self.history[index] = [*self.history.get(index, [])[-2:], (self.call, self.residuals[index])]

    def predict(self, index: int) -> dict[str, torch.Tensor]:
        history = self.history.get(index, [])
        order = min(self.config.order, len(history) - 1)
        if order <= 0:
            return self.residuals[index]
        (s1, r1), (s0, r0) = history[-1], history[-2]
        ahead = self.call - s1
        predicted = {}
        for name, latest in r1.items():
            slope = (latest - r0[name]) / (s1 - s0)
            if order == 2:
                s2, r2 = history[-3]
                slope = 1.5 * slope - 0.5 * (r0[name] - r2[name]) / (s0 - s2)
            predicted[name] = latest + ahead * slope
        return predicted
