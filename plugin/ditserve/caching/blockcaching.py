"""Block Caching: "Cache Me if You Can: Accelerating Diffusion Models through Block Caching" (Wimbauer et
al., CVPR 2024, arXiv 2312.03209).

What is cached: every block's residual, each block on its own schedule. When it is refreshed: the
schedule comes from per-block change curves — `ditserve calibrate --cache block-caching` runs the
model uncached and records, for every block, the relative L1 change of its output residual from step
to step. At run time each block accumulates the change its curve predicts (read against denoising
progress) and recomputes once the sum exceeds `threshold`, so blocks that change slowly are reused
for longer. The first step always computes. `threshold: 0` computes every block (bit-identical to no
caching). Decisions are per batch.

Scale-shift alignment, as in the paper: a reused residual r of block b, read at denoising progress p,
is replaced per channel c by a[b, p, c]·r + s[b, p, c], so that a stale residual is carried toward
what the block would compute now. The paper learns a and s by distillation; here the same calibration
fits them in closed form: it simulates the schedule at the configured threshold on the uncached
calibration runs and, for every step a block reuses, regresses the freshly computed residual on the
stale one, channel by channel and per progress bucket (`PROGRESS_BUCKETS` equal stretches of the
trajectory, so the fit carries across step counts). A ridge penalty pulls every pair toward identity
(1, 0), relative to the block's mean residual energy, so a channel with little signal, or a bucket
seen rarely, stays close to plain reuse. The fit is for the threshold it ran at (stored with it).

Where alignment helps: on digits-flow (an MMDiT) it brings a reused run about 0.6 dB closer to the
uncached images than plain reuse on held-out seeds, 20–50 steps, guidance 1.5–7 (a CI test holds it to
that); on digits-dit it does not, on average: from −0.6 to +0.5 dB by setting and seeds, about zero
over held-out ones. Likely because what a stale residual misses there is mostly per token (where the image
moved), which no per-channel map can restore. Without `alignment` the cache reuses residuals as they are.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache, relative_l1
from ditserve.caching.calibration import with_shipped_calibration
from ditserve.errors import PlanError
from ditserve.registry import CACHES

ALIGNMENT_VERSION = 2
"""The layout of `alignment`; version 1 (one scalar (scale, shift) per block, a bare list) is refused."""
PROGRESS_BUCKETS = 8
"""Equal stretches of denoising progress, each with its own alignment."""
RIDGE = 0.1
"""Strength of the pull toward identity: the penalty on (scale − 1)² and on shift², as a fraction of the
squared error of a channel whose stale residual has the block's mean energy."""
RECALIBRATE = "python -m ditserve.caching.calibration --config <model.yaml or builtin:NAME> --cache block-caching"


class Alignment(BaseModel):
    """Per block, progress bucket and channel, the scale and shift applied to a reused residual."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[2] = ALIGNMENT_VERSION
    threshold: float
    """The threshold whose schedule the alignment was fitted on."""
    scale: list[list[list[float]]]
    """[block][progress bucket][channel]."""
    shift: list[list[list[float]]]
    """[block][progress bucket][channel]."""


class BlockCachingConfig(CacheConfig):
    name: Literal["block-caching"] = "block-caching"
    threshold: float = Field(0.2, ge=0.0, le=100.0)
    """A block recomputes once its accumulated predicted change exceeds this."""
    curves: list[list[float]] | None = None
    """Per block (execution order), the calibrated step-to-step change of its residual; written by
    `ditserve calibrate --cache block-caching`."""
    alignment: Alignment | None = None
    """Per block, progress bucket and channel, the (scale, shift) applied to a reused residual; written by
    the same calibration for the threshold set when it ran. None: no alignment (plain reuse)."""

    @field_validator("alignment", mode="before")
    @classmethod
    def _refuse_old_alignment(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            raise ValueError(
                "this is the old alignment format (one scalar scale and shift per block, "
                f"no longer read); recalibrate: `{RECALIBRATE}` or `ditserve calibrate --cache block-caching`"
            )
        return value


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
        self.require_family(model)
        self.config = with_shipped_calibration(self.config, model)
        self.require_calibration("curves")
        super().apply(model)
        alignment = self.config.alignment
        for field, values in (("curves", self.config.curves[0]), ("alignment", alignment and alignment.scale)):
            if values is not None and len(values) != len(self.blocks):
                raise PlanError(
                    f"cache 'block-caching' has {field} for a model with another number of blocks "
                    f"(this one has {len(self.blocks)}): rerun `ditserve calibrate --cache block-caching`"
                )
        self.curves = np.asarray(self.config.curves, dtype=float)
        self.scale = None if alignment is None else torch.tensor(alignment.scale)
        self.shift = None if alignment is None else torch.tensor(alignment.shift)

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
        if self.scale is None:
            return residual
        stale = residual["hidden_states"]
        if stale.shape[-1] != self.scale.shape[-1]:
            raise PlanError(
                f"cache 'block-caching' has an alignment for {self.scale.shape[-1]} channels, but this model's "
                f"blocks have {stale.shape[-1]}: recalibrate, `{RECALIBRATE}`"
            )
        bucket = progress_bucket(self.progress, self.scale.shape[1])
        scale, shift = (part[index, bucket].to(stale) for part in (self.scale, self.shift))
        return {**residual, "hidden_states": stale * scale + shift}

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
        statistics = AlignmentStatistics(blocks, runs[0][1][0][0].shape[-1])
        for progress, log in runs:
            plan = schedule(curves, progress, threshold)
            for b in range(blocks):
                last = 0
                for k in range(len(log)):
                    if plan[k, b]:
                        last = k
                    else:
                        statistics.add(b, progress_bucket(progress[k], PROGRESS_BUCKETS), log[last][b], log[k][b])
        scale, shift = statistics.fit(RIDGE)
        alignment = {"version": ALIGNMENT_VERSION, "threshold": threshold, "scale": scale, "shift": shift}
        return {"curves": [[round(float(v), 6) for v in row] for row in curves], "alignment": alignment}


def progress_bucket(progress: float, buckets: int) -> int:
    """Which of `buckets` equal stretches of denoising progress `progress` falls in."""
    return min(max(int(progress * buckets), 0), buckets - 1)


class AlignmentStatistics:
    """Per block, progress bucket and channel, the sums a least-squares fit of fresh ≈ a·stale + s needs."""

    def __init__(self, blocks: int, channels: int) -> None:
        shape = (blocks, PROGRESS_BUCKETS, channels)
        self.count = torch.zeros(shape, dtype=torch.float64)
        self.stale = torch.zeros(shape, dtype=torch.float64)
        self.fresh = torch.zeros(shape, dtype=torch.float64)
        self.stale_squared = torch.zeros(shape, dtype=torch.float64)
        self.product = torch.zeros(shape, dtype=torch.float64)

    def add(self, block: int, bucket: int, stale: torch.Tensor, fresh: torch.Tensor) -> None:
        """One reused step: the residual the cache holds (`stale`) and the one the block computes (`fresh`)."""
        stale = stale.double().reshape(-1, stale.shape[-1])
        fresh = fresh.double().reshape(-1, fresh.shape[-1])
        self.count[block, bucket] += stale.shape[0]
        self.stale[block, bucket] += stale.sum(0)
        self.fresh[block, bucket] += fresh.sum(0)
        self.stale_squared[block, bucket] += (stale * stale).sum(0)
        self.product[block, bucket] += (stale * fresh).sum(0)

    def fit(self, ridge: float) -> tuple[list, list]:
        """Scale and shift per block, bucket and channel ([block][bucket][channel] lists), minimising
        Σ(fresh − a·stale − s)² + λ_a(a − 1)² + λ_s·s², with λ_a = ridge·n·(the block's mean stale²) and
        λ_s = ridge·n: identity where a bucket saw no reuse or a channel carries little of the block's signal."""
        energy = self.stale_squared.sum((1, 2), keepdim=True) / self.count.sum((1, 2), keepdim=True).clamp_min(1)
        scale_penalty = ridge * self.count * energy
        shift_penalty = ridge * self.count
        # the 2×2 normal equations [[Σs² + λ_a, Σs], [Σs, n + λ_s]]·[a, s] = [Σs·f + λ_a, Σf], per entry
        a11, a12, a22 = self.stale_squared + scale_penalty, self.stale, self.count + shift_penalty
        b1, b2 = self.product + scale_penalty, self.fresh
        determinant = a11 * a22 - a12 * a12
        seen = (self.count > 0) & (determinant > 0)
        safe = torch.where(seen, determinant, torch.ones_like(determinant))
        scale = torch.where(seen, (b1 * a22 - a12 * b2) / safe, torch.ones_like(safe))
        shift = torch.where(seen, (a11 * b2 - a12 * b1) / safe, torch.zeros_like(safe))
        return scale.round(decimals=4).tolist(), shift.round(decimals=4).tolist()


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
