"""Where diffusers' σ-space solvers (Euler, Heun) start on a schedule whose last trained timestep is almost pure
noise.

Karras et al.'s solvers integrate x/α in σ = √((1 − ᾱ)/ᾱ). Starting at the last trained timestep ("trailing"
spacing, sampling/fair.py) is right when σ there is moderate (linear betas: σ ≈ 157; Stable Diffusion's: 14.6),
but a cosine schedule clipped at β = 0.999 (`squaredcos_cap_v2`, digits-dit) has ᾱ(999) = 2.4e-9, σ ≈ 20291.
The first step then multiplies the model's noise error by 20291: Euler's unclipped x̂₀ is garbage, and Heun's
corrector averages two slopes over that jump, so both level off at 5–7 dB against the converged reference
even at 50 steps (benchmarks/results/sampling-reduced.md). Above `SIGMA_MAX` the first step is therefore taken
with DDIM steps from the last trained timestep to the next grid point, x̂₀ clipped where the checkpoint clips
(DDIM's update is exact in its model output for any σ, so the error stays that of the output). The interval
gets the model calls the solver would have spent on it, evenly spaced in t: one for Euler, two for Heun (its
Euler step and its corrector); the wrapped scheduler then runs the rest of the grid unchanged. The run keeps
its start, its grid and its number of model calls. On digits-dit at guidance 4, against DDIM-200: Heun at 50
model calls 5–7 → 40.4 dB (one DDIM step there instead of two: 38.7; starting the trailing grid at the last
moderate σ instead, t = 990, σ = 71, as if it were pure noise: 33.0), Euler 5.2 → 24.4 dB (it cannot clip later
steps, as the reference does).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from ditserve.sampling.diffusers_scheduler import DiffusersSampler
from ditserve.sampling.ode import NoiseSchedule, time_input

if TYPE_CHECKING:
    import torch

SIGMA_MAX = 80.0
"""The largest first σ a σ-space step is trusted with (Karras et al.'s σ_max for their own schedules)."""


class SigmaSpaceSampler(DiffusersSampler):
    """A wrapped σ-space solver whose first step, where σ is extreme, is a DDIM step."""

    def sample(self, denoise, noise, steps, generators, on_step, schedule=None):
        scheduler = self.make_scheduler()
        scheduler.set_timesteps(steps, device=noise.device, **(schedule or {}))
        if steps < 2 or float(scheduler.sigmas.max()) <= SIGMA_MAX or self.config.karras_sigmas:
            return super().sample(denoise, noise, steps, generators, on_step, schedule)
        grid = distinct(scheduler.timesteps)
        rest = self.make_scheduler()
        rest.set_timesteps(timesteps=grid[1:], device=noise.device)
        total = len(scheduler.timesteps)  # model calls, as many as the plain loop makes
        first = np.linspace(grid[0], grid[1], total - len(rest.timesteps) + 1)  # Euler: 1 DDIM step, Heun: 2
        x = noise
        for k, (t, t_next) in enumerate(itertools.pairwise(first)):
            x = self.ddim_step(denoise, x, float(t), float(t_next))
            on_step(k + 1, total, x)
        done = len(first) - 1
        x = x / float(NoiseSchedule(self.scheduler_config).alpha(grid[1]))  # into σ-space: x/α
        step_kwargs = self.step_kwargs()
        for i, t in enumerate(rest.timesteps):
            output = denoise(rest.scale_model_input(x, t), t)
            x = rest.step(output, t, x, return_dict=True, **step_kwargs).prev_sample
            on_step(done + i + 1, total, x)
        return x

    def ddim_step(self, denoise, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
        """One deterministic DDIM step from `t` to `t_next` in the variance-preserving scaling, x̂₀ clipped where
        the checkpoint clips and ε̂ recomputed from it (DDIM's `use_clipped_model_output`)."""
        schedule = NoiseSchedule(self.scheduler_config)
        x0 = schedule.data(denoise(x, time_input(x, t)), x, t)
        eps = (x - float(schedule.alpha(t)) * x0) / float(schedule.sigma(t))
        return float(schedule.alpha(t_next)) * x0 + float(schedule.sigma(t_next)) * eps


def distinct(timesteps: torch.Tensor) -> list[float]:
    """The distinct timesteps of a scheduler's list, in order (Heun repeats each but the first)."""
    out: list[float] = []
    for t in timesteps.tolist():
        if not out or t != out[-1]:
            out.append(t)
    return out
