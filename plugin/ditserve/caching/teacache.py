"""TeaCache: timestep embedding aware cache (Liu et al., 2024, "Timestep Embedding Tells: It's Time to
Cache for Video Diffusion Model", arXiv 2411.19108).

What is cached: the residual of the whole block stack (every block's residual from the last full
step; they telescope to the stack's). When it is refreshed: TeaCache watches the relative L1 change
of block 0's timestep-modulated input (the adapter's `modulated_input`), maps it through a
polynomial fitted per model to the change of the transformer's output it predicts, and accumulates
it; while the sum stays below `threshold` the step reuses the cache, otherwise every block computes
and the sum restarts. The first step always computes. The polynomial comes from
`ditserve calibrate --cache teacache`, which runs the model uncached and fits output change against
modulated-input change (`numpy.polyfit`); without it the cache refuses to load. `threshold: 0`
computes every block (bit-identical to no caching). Decisions are per batch (the change is measured
over the whole [cond; uncond] batch, as in the paper's code).

Step counts: the cache adapts, as in the paper. The threshold bounds the output change accumulated
since the last full step, which grows with the stretch of the trajectory covered, so at fewer steps
each step uses more of it and fewer steps in a row reuse. The polynomial maps a change to a change;
calibration fits it on requests at 20, 28 and 50 steps, so it covers the changes each step count sees.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache, relative_l1
from ditserve.caching.calibration import with_shipped_calibration
from ditserve.registry import CACHES

CALIBRATION_STEPS = (20, 28, 50)
"""The step counts calibration requests take turns at: those the default threshold is meant to hold at."""


class TeaCacheConfig(CacheConfig):
    name: Literal["teacache"] = "teacache"
    threshold: float = Field(0.065, ge=0.0, le=100.0)
    """Reuse the cache while the accumulated, rescaled input change stays below this."""
    coefficients: list[float] | None = Field(None, min_length=1, max_length=8)
    """Polynomial (highest power first) mapping the modulated input's change to the output's;
    written by `ditserve calibrate --cache teacache`."""


@CACHES.register("teacache")
class TeaCache(BlockCache):
    """TeaCache: skip the whole step while the rescaled change of the modulated input stays small."""

    Config = TeaCacheConfig
    needs_calibration = True

    def apply(self, model) -> None:
        self.require_family(model)
        self.config = with_shipped_calibration(self.config, model)
        self.require_calibration("coefficients")
        super().apply(model)
        self.polynomial = np.poly1d(self.config.coefficients)

    def reset(self) -> None:
        super().reset()
        self.previous: torch.Tensor | None = None
        self.accumulated = 0.0
        self.skip = False
        self.changes: list[float] = []
        """The raw modulated-input change of every call after the first (read by calibration)."""

    def compute(self, index, block, args, kwargs) -> bool:
        if index == 0:
            modulated = self.model.adapter.modulated_input(block, args, kwargs)
            self.skip = False
            if self.previous is not None:
                change = relative_l1(modulated, self.previous)
                self.changes.append(change)
                self.accumulated += float(self.polynomial(change))
                self.skip = self.accumulated < self.config.threshold
            if not self.skip:
                self.accumulated = 0.0
            self.previous = modulated
        return not self.skip

    @classmethod
    def calibrate(cls, engine, samples: int, settings: dict | None = None, directory=None) -> dict[str, Any]:
        """Fit `coefficients`: run `samples` uncached requests, pair each step's modulated-input change
        with the change of the transformer's output, and fit a degree-4 polynomial through them. The
        requests take turns at the step counts in `CALIBRATION_STEPS`: a step's input change grows as the
        steps get fewer, and a quartic fitted at one step count extrapolates wildly outside the changes it
        saw (fitted at 50 steps on digits-flow it predicted 0.14 for a 20-step change of 0.05)."""
        from ditserve.caching.calibration import per_request

        recorder = cls(TeaCacheConfig(threshold=0.0, coefficients=[1.0, 0.0]))
        outputs: list[torch.Tensor] = []
        hook = engine.model.transformer.register_forward_hook(
            lambda module, args, output: outputs.append(output[0] if isinstance(output, tuple) else output)
        )
        xs: list[float] = []
        ys: list[float] = []

        def collect() -> None:
            ys.extend(relative_l1(new, old) for old, new in zip(outputs, outputs[1:], strict=False))
            xs.extend(recorder.changes)
            outputs.clear()

        try:
            per_request(engine, recorder, samples, collect, CALIBRATION_STEPS)
        finally:
            hook.remove()
        if len(xs) < 5:
            raise ValueError("calibration saw fewer than 5 steps; give more samples or steps")
        fit = np.polyfit(np.asarray(xs), np.asarray(ys), deg=4)
        return {"coefficients": [float(c) for c in fit]}
