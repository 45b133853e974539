"""The analytic case for ODE solvers: Gaussian data, whose exact predictor and exact ODE solution are known.

For x₀ ~ N(μ, diag(s²)) and x_τ = α_τ x₀ + σ_τ ε, the marginal is N(α μ, v) with v = α² s² + σ², the
exact noise prediction is E[ε | x] = σ (x − α μ)/v, and the probability-flow ODE keeps every
coordinate's standardised value z = (x − α μ)/√v constant: x_t = α_t μ + √v_t · z. So a solver's error
against the true solution is measurable without any network.
"""

from __future__ import annotations

import torch

from ditserve.sampling.ode import NoiseSchedule

VP_CONFIG = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
             "prediction_type": "epsilon", "clip_sample": False}  # fmt: skip
FLOW_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0}


class GaussianData:
    """Per-dimension Gaussian data; `denoise(x, t)` answers as a model of the schedule's prediction type."""

    def __init__(self, scheduler_config: dict, shape=(1, 4, 4), seed: int = 0, spread: float = 0.5) -> None:
        self.schedule = NoiseSchedule(scheduler_config)
        generator = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(shape, generator=generator, dtype=torch.float64) * 0.5
        self.std = spread * torch.rand(shape, generator=generator, dtype=torch.float64) + 0.1
        self.shape = shape

    def _coefficients(self, t: torch.Tensor, x: torch.Tensor):
        taus = t.double().reshape(-1).expand(x.shape[0]).numpy()
        view = (-1,) + (1,) * (x.dim() - 1)
        alpha = torch.from_numpy(self.schedule.alpha(taus)).reshape(view)
        sigma = torch.from_numpy(self.schedule.sigma(taus)).reshape(view)
        return alpha, sigma

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact model output at `x`, timestep(s) `t` (0-d or one per row)."""
        alpha, sigma = self._coefficients(t, x)
        xd = x.double()
        v = alpha**2 * self.std**2 + sigma**2
        eps = sigma * (xd - alpha * self.mu) / v
        x0 = self.mu + alpha * self.std**2 * (xd - alpha * self.mu) / v
        kind = self.schedule.prediction
        out = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "flow": eps - x0}[kind]
        return out.to(x.dtype)

    def exact(self, x_start: torch.Tensor, tau_start: float, tau_end: float) -> torch.Tensor:
        """The true ODE solution at `tau_end` from `x_start` at `tau_start`."""
        ns = self.schedule
        a0, s0, a1, s1 = (float(ns.alpha(tau_start)), float(ns.sigma(tau_start)), float(ns.alpha(tau_end)),
                          float(ns.sigma(tau_end)))  # fmt: skip
        z = (x_start.double() - a0 * self.mu) / torch.sqrt(a0**2 * self.std**2 + s0**2)
        return a1 * self.mu + torch.sqrt(a1**2 * self.std**2 + s1**2) * z

    def noise(self, batch: int, seed: int = 1) -> torch.Tensor:
        return torch.randn((batch, *self.shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class RotatedGaussianData(GaussianData):
    """The same data in a randomly rotated basis: the exact model's Jacobian is no longer diagonal, so a
    Hutchinson probe of its diagonal is noisy, as on a real network."""

    def __init__(self, scheduler_config: dict, seed: int = 0) -> None:
        super().__init__(scheduler_config, seed=seed)
        dims = int(torch.tensor(self.shape).prod())
        generator = torch.Generator().manual_seed(seed + 7)
        self.rotation = torch.linalg.qr(torch.randn(dims, dims, generator=generator, dtype=torch.float64))[0]

    def _rotate(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        return (x.double().flatten(1) @ matrix.T).reshape(x.shape)

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inner = super().denoise(self._rotate(x, self.rotation.T).to(x.dtype), t)
        return self._rotate(inner, self.rotation).to(x.dtype)

    def exact(self, x_start: torch.Tensor, tau_start: float, tau_end: float) -> torch.Tensor:
        inner = super().exact(self._rotate(x_start, self.rotation.T), tau_start, tau_end)
        return self._rotate(inner, self.rotation)


def run(sampler, data: GaussianData, noise: torch.Tensor, steps: int, counter: list | None = None) -> torch.Tensor:
    """`sampler.sample` over the analytic model; `counter` collects the batch size of every call."""

    def denoise(x, t):
        if counter is not None:
            counter.append(x.shape[0])
        return data.denoise(x, t)

    return sampler.sample(denoise, noise, steps, [torch.Generator()] * noise.shape[0], lambda *a: None)


def error(sampler, data: GaussianData, noise: torch.Tensor, steps: int, schedule: dict | None = None) -> float:
    """Largest absolute deviation from the exact ODE solution at the sampler's own end point."""
    taus = sampler.taus(steps, schedule)
    out = run(sampler, data, noise, steps)
    return float((out.double() - data.exact(noise, taus[0], taus[-1])).abs().max())
