"""Common ground of the own stochastic (SDE) solvers: they re-inject noise every step, drawn from each image's own
generator, so a run is reproducible from its seeds and an image comes out the same in any batch.

They take the same explicit timesteps as the own ODE solvers (`ode.py`), so a `sampler-scheduler` can run them
over a range of the steps, e.g. SDE steps through the noisy start and ODE steps to the end (Cheng, 2023).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ditserve.errors import PlanError
from ditserve.sampling.ode import ODESampler, Progress

if TYPE_CHECKING:
    import torch


class SDESampler(ODESampler):
    """Base of the own SDE solvers: `integrate` also takes the run's per-image generators."""

    def sample(self, denoise, noise, steps, generators, on_step, schedule=None):
        return self.integrate(denoise, noise, self.taus(steps, schedule), Progress(on_step, 0, steps), generators)

    def integrate(self, denoise, x, taus, progress, generators=()):
        raise NotImplementedError


def fresh_noise(x: torch.Tensor, generators) -> torch.Tensor:
    """Standard normal noise shaped like `x`, image k drawn from generators[k]."""
    import torch

    if len(generators) != x.shape[0]:
        raise PlanError(f"a stochastic sampler needs one generator per image: {len(generators)} for {x.shape[0]}")
    draws = [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in generators]
    return torch.stack(draws).to(x.device)
