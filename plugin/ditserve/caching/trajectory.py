"""Cache settings that mean the same at any step count: stated in denoising progress, not in steps.

A cached feature goes stale in proportion to how far the sample has moved since it was computed. With
fewer steps each step covers more of the trajectory, so a reuse interval counted in steps, or a
threshold on the change between two steps, means something else at 20 steps than at 50: settings tuned
at 50 steps then lose several dB at 20–28. Caches state theirs against denoising progress
p = 1 − t/t₀ instead (0 at the request's first call, approaching 1 at its last, whatever the step
count; t is the timestep the transformer is called with):

- a spacing between full steps is a fraction of the trajectory (`full_step_due`), optionally measured on
  a scale that is stretched at both ends (`ends`, `trajectory_position`), so full steps come denser at
  the start, where the layout forms, and at the end, where fine detail settles, and sparser in the
  middle, where features change least between steps (the U-shaped per-step change that TeaCache and
  SmoothCache measure; cache-dit's step masks and the warm-ups of FORA and TaylorSeer front-load too);
- a threshold on the change over one step is stated for a reference step of `REFERENCE_STEP` (one step
  of 50) and scaled by the size of the actual step (`step_scale`), so the same threshold lets a cached
  feature drift over the same stretch of the trajectory at any step count.
"""

from __future__ import annotations

import math

REFERENCE_STEP = 0.02
"""The step, in denoising progress, that per-step thresholds are stated for: one step of 50."""

TOLERANCE = 1e-9
"""Slack in progress comparisons, so a spacing that is an exact multiple of the step is reached."""


def trajectory_position(progress: float, ends: float) -> float:
    """`progress` on a scale stretched by up to 1 + `ends` at both ends of the trajectory and shrunk to
    1 − `ends` in its middle (slope 1 + ends·cos 2πp; 0 and 1 stay put). `ends` 0 is progress itself."""
    return progress + ends * math.sin(2 * math.pi * progress) / (2 * math.pi)


def full_step_due(progress: float, last_full: float, spacing: float, ends: float = 0.0) -> bool:
    """Whether at least `spacing` of the trajectory (on the scale `ends` stretches) passed since the last
    full step (at `last_full`)."""
    return trajectory_position(progress, ends) - trajectory_position(last_full, ends) >= spacing - TOLERANCE


def step_scale(step: float) -> float:
    """What a per-step threshold stated for `REFERENCE_STEP` is multiplied by for a step of `step` progress."""
    return step / REFERENCE_STEP


def static_full_step(
    call: int, progress: float, last_full: float, warmup: int, interval: int | None, spacing: float, ends: float
) -> bool:
    """Whether call `call` (at `progress`; the last full step at `last_full`) computes every block, for a
    cache with a static schedule: the first `warmup` calls, then every `interval` calls when one is given,
    else whenever `spacing` of the trajectory (stretched at its `ends`) passed."""
    if call < warmup:
        return True
    if interval is not None:
        return (call - warmup) % interval == 0
    return call == 0 or full_step_due(progress, last_full, spacing, ends)
