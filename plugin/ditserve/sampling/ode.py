"""Common ground of the own ODE solvers: the model's noise schedule, its predictions as data or noise, and
where the steps go.

Every own solver integrates the probability-flow ODE of x_τ = α_τ x₀ + σ_τ ε, written in the half
log-SNR λ = log(α/σ) (Lu et al., 2022, "DPM-Solver"). Two kinds of schedule:
- variance-preserving (DDPM-family checkpoints): α_τ² = ᾱ_τ of the training betas, log α interpolated
  piecewise-linearly between the integer training timesteps so that fractional τ are valid model inputs;
- rectified flow (flow-matching checkpoints): α = 1 − s, σ = s with s = τ / num_train_timesteps.
The model's output (ε, v or the flow velocity) is converted to the data prediction x̂₀ (optionally
clipped, recomputing ε from the clipped x̂₀ as DDIM's `use_clipped_model_output` does) or the noise ε̂.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from ditserve.sampling.base import Sampler, SamplerConfig, prediction_type

if TYPE_CHECKING:
    import torch

Spacing = Literal["time_uniform", "logsnr", "time_quadratic"]

FLOW_SIGMA_MAX = 0.999
"""Flow models start at s = 0.999, not 1: λ = log((1 − s)/s) is −∞ at s = 1 (the noise differs by 0.1%)."""


class ODESamplerConfig(SamplerConfig):
    """Fields every own ODE solver shares."""

    spacing: Spacing = "time_uniform"
    """Where the steps go: uniform in the model's timestep (flow models: in the shifted sigma, as
    diffusers' flow schedulers), uniform in log-SNR, or quadratic in time (denser near the data)."""
    clip_sample: bool | None = None
    """Clip the data prediction to [-1, 1] and recompute the noise from it; None keeps the checkpoint's
    `clip_sample` (the digits model needs it at guidance 4, as DDIM does)."""
    shift: float | None = Field(None, gt=0.0, le=100.0)
    """Flow models: timestep shift (SD3's `shift`); None keeps the checkpoint's (a request's `mu` wins)."""


class NoiseSchedule:
    """α(τ), σ(τ), λ(τ) over the model's timestep τ, its inverse τ(λ), and conversions of model outputs."""

    def __init__(self, scheduler_config: dict, clip: bool | None = None, shift: float | None = None) -> None:
        self.prediction = prediction_type(scheduler_config)
        self.train_steps = int(scheduler_config.get("num_train_timesteps", 1000))
        self.flow = self.prediction == "flow"
        if self.flow:
            self.tau_max, self.tau_min = FLOW_SIGMA_MAX * self.train_steps, 1.0
            self.shift = float(shift if shift is not None else scheduler_config.get("shift", 1.0))
        else:
            from diffusers import DDPMScheduler  # the training betas exactly as diffusers builds them

            cumprod = DDPMScheduler.from_config(scheduler_config).alphas_cumprod.double().numpy()
            self.log_alphas = 0.5 * np.log(cumprod)
            self.tau_max, self.tau_min = float(len(cumprod) - 1), 0.0
        default_clip = bool(scheduler_config.get("clip_sample", False)) and not self.flow
        self.clip = default_clip if clip is None else clip
        self.clip_range = float(scheduler_config.get("clip_sample_range", 1.0))

    # -- the forward process -------------------------------------------------------------------

    def log_alpha(self, tau):
        tau = np.asarray(tau, dtype=float)
        if self.flow:
            return np.log1p(-tau / self.train_steps)
        return np.interp(tau, np.arange(len(self.log_alphas)), self.log_alphas)

    def alpha(self, tau):
        return np.exp(self.log_alpha(tau))

    def sigma(self, tau):
        tau = np.asarray(tau, dtype=float)
        if self.flow:
            return tau / self.train_steps
        return np.sqrt(-np.expm1(2 * self.log_alpha(tau)))

    def lam(self, tau):
        return self.log_alpha(tau) - np.log(self.sigma(tau))

    def tau(self, lam):
        """The timestep with half log-SNR `lam` (exact inverse of `lam`)."""
        lam = np.asarray(lam, dtype=float)
        if self.flow:
            return self.train_steps / (1.0 + np.exp(lam))
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lam)
        return np.interp(log_alpha, self.log_alphas[::-1], np.arange(len(self.log_alphas))[::-1].astype(float))

    # -- step placement ------------------------------------------------------------------------

    def timesteps(self, steps: int, spacing: Spacing, mu: float | None = None) -> np.ndarray:
        """`steps + 1` timesteps from pure noise down to the last (least noisy) one, decreasing."""
        if spacing == "logsnr":
            return self.tau(np.linspace(self.lam(self.tau_max), self.lam(self.tau_min), steps + 1))
        u = np.linspace(1.0, 0.0, steps + 1)
        if spacing == "time_quadratic":
            u = u**2
        if not self.flow:
            return self.tau_min + u * (self.tau_max - self.tau_min)
        sigmas = (self.tau_min + u * (self.tau_max - self.tau_min)) / self.train_steps
        shift = float(np.exp(mu)) if mu is not None else self.shift
        return self.train_steps * shift * sigmas / (1.0 + (shift - 1.0) * sigmas)

    # -- model outputs ---------------------------------------------------------------------------

    def data(self, output: torch.Tensor, x: torch.Tensor, tau: float) -> torch.Tensor:
        """The data prediction x̂₀ from the model's output at `x`, τ (clipped when configured)."""
        alpha, sigma = float(self.alpha(tau)), float(self.sigma(tau))
        if self.prediction == "epsilon":
            x0 = (x - sigma * output) / alpha
        elif self.prediction == "v_prediction":
            x0 = alpha * x - sigma * output
        elif self.prediction == "flow":
            x0 = x - sigma * output
        else:  # "sample"
            x0 = output
        return x0.clamp(-self.clip_range, self.clip_range) if self.clip else x0

    def noise(self, output: torch.Tensor, x: torch.Tensor, tau: float) -> torch.Tensor:
        """The noise prediction ε̂ consistent with `data` (so clipping shows in both)."""
        return (x - float(self.alpha(tau)) * self.data(output, x, tau)) / float(self.sigma(tau))


class ODESampler(Sampler):
    """Base of the own solvers: builds the schedule; subclasses integrate with `data_fn` / `noise_fn`."""

    Config = ODESamplerConfig
    prediction_types = frozenset({"epsilon", "v_prediction", "flow"})

    def __init__(self, config: ODESamplerConfig, scheduler_config: dict) -> None:
        super().__init__(config, scheduler_config)
        self.noise_schedule = NoiseSchedule(self.scheduler_config, config.clip_sample, config.shift)

    def taus(self, steps: int, schedule: dict | None) -> np.ndarray:
        return self.noise_schedule.timesteps(steps, self.config.spacing, (schedule or {}).get("mu"))

    def sample(self, denoise, noise, steps, generators, on_step, schedule=None):
        return self.integrate(denoise, noise, self.taus(steps, schedule), Progress(on_step, 0, steps))

    def integrate(self, denoise, x: torch.Tensor, taus: np.ndarray, progress: Progress) -> torch.Tensor:
        """From `x` at taus[0] through the remaining `taus`: the whole run, or one stage of a `sampler-scheduler`
        (`progress` knows which steps of the whole run these are)."""
        raise NotImplementedError

    def data_fn(self, denoise):
        """`x, τ → x̂₀` over the model."""
        return lambda x, tau: self.noise_schedule.data(denoise(x, time_input(x, tau)), x, tau)

    def noise_fn(self, denoise):
        """`x, τ → ε̂` over the model."""
        return lambda x, tau: self.noise_schedule.noise(denoise(x, time_input(x, tau)), x, tau)


class Progress:
    """Reports steps of a stage as steps of the whole run: `progress(i, x)` after the stage's i-th step."""

    def __init__(self, on_step, first: int, total: int) -> None:
        self.on_step, self.first, self.total = on_step, first, total

    def __call__(self, done: int, x: torch.Tensor) -> None:
        self.on_step(self.first + done, self.total, x)


def time_input(x: torch.Tensor, tau: float) -> torch.Tensor:
    """The model's timestep input for `x` at τ, a 0-d tensor on `x`'s device."""
    import torch

    return torch.tensor(float(tau), device=x.device, dtype=torch.float32)
