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

Motion regularisation (the paper's MoReg, for video; `motion`, off by default and for images): a video with
more motion needs fresher features, so the rate is scaled up by the video's motion before the codebook lookup.
The motion score m is the probe residual's change from one latent frame to the next (mean |r_f − r_{f−1}|
over mean |r|, tokens ordered frame by frame as Wan orders them), its gradient g the change of m per
reference step since the previous full step (the score read on noisy latents is unreliable early; its trend
is the better estimate, as in the paper). The paper multiplies the rate by (m + g); here the factor is
1 + motion · max(m + g, 0), so that the codebook keeps its unregularised scale and `motion: 0` is AdaCache
without it. A one-frame latent (an image) has no motion: the factor is 1.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.hooks import ModelHook
from pydantic import Field, field_validator

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache, relative_l1
from ditserve.caching.trajectory import REFERENCE_STEP, full_step_due
from ditserve.hooks import add_hook, remove_hook
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
    motion: float = Field(0.0, ge=0.0, le=100.0)
    """Weight of the motion regularisation (video): the rate is multiplied by 1 + motion × the motion score plus
    its gradient. 0: off (images have no motion to read)."""

    @field_validator("codebook")
    @classmethod
    def _ascending(cls, codebook):
        if [t for t, _ in codebook] != sorted(t for t, _ in codebook) or any(n < 1 for _, n in codebook):
            raise ValueError("thresholds must ascend and every reuse length be at least 1")
        return codebook


class LatentFrames(ModelHook):
    """A pre-forward hook on the transformer: reads how many latent frames (after temporal patching) a call has,
    1 for an image's 4-D latents."""

    def __init__(self, temporal_patch: int) -> None:
        super().__init__()
        self.temporal_patch = temporal_patch
        self.frames = 1

    def pre_forward(self, module, *args, **kwargs):
        x = kwargs.get("hidden_states", args[0] if args else None)
        self.frames = x.shape[2] // self.temporal_patch if isinstance(x, torch.Tensor) and x.ndim == 5 else 1
        return args, kwargs


def motion_score(residual: torch.Tensor, frames: int) -> float:
    """Mean |r_f − r_{f−1}| over mean |r| of a residual (batch, frames × tokens per frame, width); 0 for one frame."""
    if frames < 2:
        return 0.0
    per_frame = residual.reshape(residual.shape[0], frames, -1, residual.shape[-1])
    return relative_l1(per_frame[:, 1:], per_frame[:, :-1])


@CACHES.register("adacache")
class AdaCache(BlockCache):
    """AdaCache: after each full step, the features' rate of change picks how many steps reuse the cache."""

    Config = AdaCacheConfig

    def apply(self, model) -> None:
        super().apply(model)
        self.probe = self.config.probe % len(self.blocks)
        patch = getattr(model.transformer.config, "patch_size", None)
        self.latent_frames = LatentFrames(patch[0] if isinstance(patch, (list, tuple)) and len(patch) == 3 else 1)
        if self.config.motion:
            add_hook(model.transformer, model.transformer, self.latent_frames, self.frames_hook)

    @property
    def frames_hook(self) -> str:
        return f"{self.hook_name}.frames"

    def remove(self) -> None:
        if self.model is not None:
            remove_hook(self.model.transformer, self.frames_hook)
        super().remove()

    def reset(self) -> None:
        super().reset()
        self.reuse = 0
        self.probe_residual: torch.Tensor | None = None
        self.probe_progress = 0.0
        self.motion: float | None = None
        """The motion score at the last full step (None before the first)."""

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
        motion = motion_score(residual, self.latent_frames.frames) if self.config.motion else 0.0
        if self.probe_residual is not None and self.progress > self.probe_progress:
            per_reference_step = REFERENCE_STEP / (self.progress - self.probe_progress)
            rate = relative_l1(residual, self.probe_residual) * per_reference_step
            if self.config.motion:
                gradient = (motion - self.motion) * per_reference_step
                rate *= 1 + self.config.motion * max(motion + gradient, 0.0)
            self.reuse = next((length for threshold, length in self.config.codebook if rate < threshold), 0)
        self.probe_residual, self.probe_progress, self.motion = residual, self.progress, motion
