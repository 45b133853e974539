"""Block Caching: "Cache Me if You Can: Accelerating Diffusion Models through Block Caching" (Wimbauer et
al., CVPR 2024, arXiv 2312.03209).

What is cached: every block's residual, each block on its own schedule. When it is refreshed: the
schedule comes from per-block change curves — `ditserve calibrate --cache block-caching` runs the
model uncached and records, for every block, the relative L1 change of its output residual from step
to step. At run time each block accumulates the change its curve predicts (read against denoising
progress) and recomputes once the sum exceeds `threshold`, so blocks that change slowly are reused
for longer. Scale-shift alignment: a reused residual r is replaced by a·r + b with a scalar scale a
and shift b per block, fitted in the same calibration by least squares between the stale residual and
the true one at the steps the schedule reuses (the paper learns them per channel and timestep by
distillation; a scalar pair per block is what a few uncached runs can fit). The first step always
computes. `threshold: 0` computes every block (bit-identical to no caching). Decisions are per batch.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache, relative_l1
from ditserve.caching.calibration import with_shipped_calibration
from ditserve.errors import PlanError
from ditserve.registry import CACHES


class BlockCachingConfig(CacheConfig):
    name: Literal["block-caching"] = "block-caching"
    threshold: float = Field(0.2, ge=0.0, le=100.0)
    """A block recomputes once its accumulated predicted change exceeds this."""
    curves: list[list[float]] | None = None
    """Per block (execution order), the calibrated step-to-step change of its residual; written by
    `ditserve calibrate --cache block-caching`."""
    alignment: list[tuple[float, float]] | None = None
    """Per block, the (scale, shift) applied to a reused residual; written by the same calibration for
    the threshold set when it ran. None: no alignment."""


def schedule(curves: np.ndarray, progress: list[float], threshold: float) -> np.ndarray:
    """Which blocks compute at each call: (calls, blocks) booleans, from the accumulated predicted change."""
    from ditserve.caching.calibration import predicted_change

    calls, blocks = len(progress), curves.shape[1]
    compute = np.ones((calls, blocks), dtype=bool)
    accumulated = np.zeros(blocks)
    for call in range(1, calls):
        for block in range(blocks):
            accumulated[block] += predicted_change(list(curves[:, block]), progress[call - 1], progress[call])
            compute[call, block] = threshold <= 0 or accumulated[block] > threshold
            if compute[call, block]:
                accumulated[block] = 0.0
    return compute


@CACHES.register("block-caching")
class BlockCaching(BlockCache):
    """Block Caching: per-block schedules from calibrated change curves, with scale-shift alignment."""

    Config = BlockCachingConfig
    needs_calibration = True

    def apply(self, model) -> None:
        self.config = with_shipped_calibration(self.config, model)
        self.require_calibration("curves")
        super().apply(model)
        for field in ("curves", "alignment"):
            values = getattr(self.config, field)
            if values is not None and len(values if field == "alignment" else values[0]) != len(self.blocks):
                raise PlanError(
                    f"cache 'block-caching' has {field} for a model with another number of blocks "
                    f"(this one has {len(self.blocks)}): rerun `ditserve calibrate --cache block-caching`"
                )
        self.curves = np.asarray(self.config.curves, dtype=float)

    def reset(self) -> None:
        super().reset()
        self.accumulated = [0.0] * len(getattr(self, "blocks", []))
        self.last_progress = 0.0

    def begin_call(self) -> None:
        from ditserve.caching.calibration import predicted_change

        self.compute_now = []
        for block in range(len(self.blocks)):
            if self.call == 0 or self.config.threshold <= 0:
                self.compute_now.append(True)
                continue
            self.accumulated[block] += predicted_change(list(self.curves[:, block]), self.last_progress, self.progress)
            due = self.accumulated[block] > self.config.threshold
            self.compute_now.append(due)
            if due:
                self.accumulated[block] = 0.0
        self.last_progress = self.progress

    def compute(self, index, block, args, kwargs) -> bool:
        return self.compute_now[index]

    def predict(self, index: int) -> dict[str, torch.Tensor]:
        residual = self.residuals[index]
        if self.config.alignment is None:
            return residual
        scale, shift = self.config.alignment[index]
        return {**residual, "hidden_states": residual["hidden_states"] * scale + shift}

    @classmethod
    def calibrate(cls, engine, samples: int, settings: dict | None = None, directory=None) -> dict[str, Any]:
        """Record every block's residual at every step uncached; derive the change curves, simulate the
        schedule at the configured threshold, and fit each block's scale and shift on the reused steps."""
        from ditserve.caching.calibration import per_request

        threshold = float((settings or {}).get("threshold", BlockCachingConfig.model_fields["threshold"].default))
        recorder = ResidualRecorder(None)
        runs = per_request(engine, recorder, samples, lambda: (recorder.progress_log, recorder.log))
        blocks = len(recorder.blocks)
        changes = [
            [[relative_l1(log[k][b], log[k - 1][b]) for b in range(blocks)] for k in range(1, len(log))]
            for _, log in runs
        ]
        curves = np.asarray(changes).mean(axis=0)
        pairs: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(blocks)]
        for progress, log in runs:
            plan = schedule(curves, progress, threshold)
            for b in range(blocks):
                last = 0
                for k in range(len(log)):
                    if plan[k, b]:
                        last = k
                    else:
                        pairs[b].append((log[last][b], log[k][b]))
        alignment = [fit_scale_shift(block_pairs) for block_pairs in pairs]
        return {"curves": [[round(float(v), 6) for v in row] for row in curves], "alignment": alignment}


def fit_scale_shift(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Least-squares (a, b) for true ≈ a·stale + b over all pairs; (1, 0) when nothing is reused."""
    if not pairs:
        return (1.0, 0.0)
    stale = torch.cat([s.flatten() for s, _ in pairs]).double()
    true = torch.cat([t.flatten() for _, t in pairs]).double()
    variance = stale.var(unbiased=False)
    if variance <= 0:
        return (1.0, 0.0)
    scale = ((stale - stale.mean()) * (true - true.mean())).mean() / variance
    shift = true.mean() - scale * stale.mean()
    return (round(float(scale), 6), round(float(shift), 6))


class ResidualRecorder(BlockCache):
    """Computes every block and keeps every block's image-stream residual of every call (on the CPU)."""

    def reset(self) -> None:
        super().reset()
        self.log: list[list[torch.Tensor]] = []
        self.progress_log: list[float] = []

    def begin_call(self) -> None:
        self.log.append([])
        self.progress_log.append(self.progress)

    def after_block(self, index, inputs, outputs) -> None:
        self.log[-1].append(self.residuals[index]["hidden_states"].float().cpu())
