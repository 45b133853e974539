"""DPM-Solver-v3 (Zheng, Lu, Bao, Zhu, 2023, "DPM-Solver-v3: Improved Diffusion ODE Solver with Empirical
Model Statistics", NeurIPS 2023, arXiv 2310.13268).

The probability-flow ODE in λ = log(α/σ) is dx/dλ = (d log α/dλ) x − σ ε̂(x, λ). DPM-Solver(++) split it
into an exactly integrated linear part and a nonlinear part approximated by a Taylor polynomial of
ε̂ (or x̂₀). v3 picks the split from the model itself, with three per-dimension *empirical model
statistics* (EMS) over λ:
- l_λ = σ E[diag ∂ε̂/∂x]: moves the model's linear part into the exactly integrated term, so the rest,
  N = σε̂ − l x, depends on x as little as possible (min E‖∇ₓN‖²_F);
- s_λ, b_λ: the least-squares fit f′ ≈ s f + b of the rest f = N/α against its λ-derivative along
  trajectories; the reparameterised g = e^{−∫s} f − ∫e^{−∫s} b is then nearly constant in λ, so
  the Taylor expansion of g is far more accurate than that of ε̂ or x̂₀ at few steps.
The update from λ_s to λ_t is x_t = (α_t/α_s) e^{−(L_t−L_s)} x_s − α_t ∫ e^{L_λ−L_t} f dλ with g's
Taylor polynomial inside (multistep: derivatives from earlier points), and a UniPC-style corrector
re-runs each step with the new point's model output (no extra model call). With l = 1, s = b = 0 the
predictor is DPM-Solver++(2M) (data prediction, the linear Taylor term integrated exactly: diffusers'
`solver_type="heun"`), up to the quadrature on the statistics' grid (a test checks it).

The EMS come from `ditserve calibrate --sampler dpm-solver-v3`: trajectories of `CALIBRATION_SAMPLES`
calibration requests on a fine λ grid (the paper estimates them on a fine grid from many samples, too), l
by finite-difference Hutchinson probes of the Jacobian diagonal (evaluated in the same batched model call
as the trajectory), s and b by per-dimension least squares, each smoothed over neighbouring λ. They are
stored in a safetensors file beside the model's YAML that `statistics` names; without it the sampler
refuses to load.

What mattered, measured on digits-flow at 5 steps (PSNR against the 200-step reference; DPM-Solver++
29.3 dB): calibrated on 2 stock prompts the model was never trained on ("a photo of a cat") v3 reached
16 dB, on 16 digit prompts 26.5 dB (text models are now calibrated on the prompts their checkpoint
ships, `calibrate.py`); a ridge pulling s toward 0 where f varies little across samples (most
of a digit's background) and a bound of 2 on |s| cost another 1.2 dB (and 12 dB at 50 steps, where v3
stopped converging); the first-order predictor gained 2.6 dB over the second-order one (31.7 dB). On
digits-dit (DPM-Solver++ 25.5 dB) s and b had been fitted to f computed with the raw l while the solver
used the smoothed l: 23.8 dB, fitted consistently 26.7 dB.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from ditserve.errors import PlanError
from ditserve.registry import SAMPLERS
from ditserve.sampling.ode import NoiseSchedule, ODESampler, ODESamplerConfig

if TYPE_CHECKING:
    import torch

GRID_STEPS = 250
"""Intervals of the λ grid the statistics are computed on (sampling steps snap to it)."""
S_BOUND = 6.0
"""|s| is kept at most this (per unit of λ): a guard where a pixel hardly varies over the calibration
samples and least squares can fit a wild slope (the update exponentiates ∫s)."""
CALIBRATION_SAMPLES = 32
"""Calibration trajectories by default: on digits-flow (PSNR at 5 steps) 4 samples leave v3 3.2 dB behind 32,
8 samples 0.2 dB, 16 samples 0.0 dB; at 10 steps 8 and 16 samples lose 2.3 and 0.5 dB."""
L_BOUNDS = (-1.0, 3.0)
"""l is kept in this range (Gaussian data give 0..1); a noisy probe of a poor model must not overflow e^{∫l}."""


class DPMSolverV3Config(ODESamplerConfig):
    name: Literal["dpm-solver-v3"] = "dpm-solver-v3"
    steps: int = Field(10, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""
    order: int = Field(1, ge=1, le=3)
    """Order of the multistep predictor (the corrector adds one). 1 by default: with the EMS, g is nearly
    constant in λ, and extrapolating it from the previous point over the few long steps of a 5–10-step run
    costs more than it gains (digits-flow at 5 steps: 31.7 dB with order 1, 29.1 dB with 2; 50 steps: equal)."""
    corrector: bool = True
    """Re-run every step with the new point's model output (free: no extra model call)."""
    lower_order_final: bool = True
    """Lower the order over the last steps (stabler at few steps)."""
    statistics: str | None = None
    """The empirical model statistics (safetensors); written by `ditserve calibrate --sampler dpm-solver-v3`."""


class Statistics:
    """EMS on a uniform λ grid and the integrals the update needs (float64, per dimension)."""

    def __init__(self, lambdas: torch.Tensor, l: torch.Tensor, s: torch.Tensor, b: torch.Tensor) -> None:  # noqa: E741
        import torch

        shape = (-1,) + (1,) * (l.dim() - 1)
        self.lambdas = lambdas.double()
        self.l, self.s, self.b = l.double(), s.double(), b.double()
        lam = self.lambdas.reshape(shape)
        self.L = cumulative_trapezoid(self.l, lam)
        self.S = cumulative_trapezoid(self.s, lam)
        self.I = cumulative_trapezoid(torch.exp(self.L + self.S), lam)  # noqa: E741
        self.B = cumulative_trapezoid(torch.exp(-self.S) * self.b, lam)
        self.C = cumulative_trapezoid(torch.exp(self.L + self.S) * self.B, lam)

    @classmethod
    def load(cls, path: str) -> Statistics:
        from safetensors.torch import load_file

        data = load_file(path)
        return cls(data["lambdas"], data["l"], data["s"], data["b"])

    @classmethod
    def degenerate(cls, schedule: NoiseSchedule, shape: tuple[int, ...], grid: int = GRID_STEPS) -> Statistics:
        """l = 1, s = b = 0: the update is DPM-Solver++'s (data prediction)."""
        import torch

        lambdas = torch.linspace(float(schedule.lam(schedule.tau_max)), float(schedule.lam(schedule.tau_min)), grid + 1)
        ones = torch.ones((grid + 1, *shape), dtype=torch.float64)
        return cls(lambdas, ones, torch.zeros_like(ones), torch.zeros_like(ones))

    def index(self, lam: np.ndarray) -> np.ndarray:
        """Grid indices nearest to `lam` (increasing λ), kept strictly increasing. The grid need not be uniform."""
        grid = len(self.lambdas) - 1
        idx = np.abs(np.asarray(lam, dtype=float)[:, None] - self.lambdas.numpy()[None, :]).argmin(axis=1)
        for k in range(1, len(idx)):
            idx[k] = max(idx[k], idx[k - 1] + 1)
        if idx[-1] > grid:
            raise ValueError(f"{len(idx) - 1} steps do not fit the statistics' {grid}-interval grid; use fewer steps")
        return idx


def cumulative_trapezoid(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∫ y dx from the first grid point to each grid point (dim 0), starting at 0."""
    import torch

    parts = 0.5 * (x[1:] - x[:-1]) * (y[1:] + y[:-1])
    return torch.cat([torch.zeros_like(y[:1]), torch.cumsum(parts, dim=0)])


class V3Update:
    """The v3 step from an anchor point s to grid index t, given the statistics."""

    def __init__(self, stats: Statistics, schedule: NoiseSchedule, device, dtype) -> None:
        self.st = stats
        self.schedule = schedule
        self.lam = stats.lambdas.numpy()
        self.taus = schedule.tau(self.lam)
        self.device, self.dtype = device, dtype

    def _at(self, tensor: torch.Tensor, i: int) -> torch.Tensor:
        return tensor[i].to(self.device)

    def f(self, x: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        """f = (σ ε̂ − l x)/α at grid point i."""
        tau = self.taus[i]
        return (float(self.schedule.sigma(tau)) * eps.double() - self._at(self.st.l, i) * x.double()) / float(
            self.schedule.alpha(tau)
        )

    def __call__(self, anchor: tuple, others: list[tuple], i_t: int) -> torch.Tensor:
        """x at grid index `i_t` from `anchor` = (x_s, ε̂_s, i_s) and earlier/later points for the derivatives."""
        import torch

        st, at = self.st, self._at
        x_s, eps_s, i_s = anchor
        alpha_s, alpha_t = float(self.schedule.alpha(self.taus[i_s])), float(self.schedule.alpha(self.taus[i_t]))
        L_s, L_t, S_s = at(st.L, i_s), at(st.L, i_t), at(st.S, i_s)
        I_s, I_t, B_s = at(st.I, i_s), at(st.I, i_t), at(st.B, i_s)
        g_s = self.f(x_s, eps_s, i_s)
        x_t = (
            alpha_t / alpha_s * torch.exp(L_s - L_t) * x_s.double()
            - alpha_t * torch.exp(-L_t - S_s) * (I_t - I_s) * g_s
            - alpha_t * torch.exp(-L_t) * (at(st.C, i_t) - at(st.C, i_s) - B_s * (I_t - I_s))
        )
        if others:
            diffs, rows = [], []
            for x_k, eps_k, i_k in others:
                g_k = torch.exp(S_s - at(st.S, i_k)) * self.f(x_k, eps_k, i_k) - torch.exp(S_s) * (at(st.B, i_k) - B_s)
                diffs.append(g_k - g_s)
                rows.append([(self.lam[i_k] - self.lam[i_s]) ** n for n in range(1, len(others) + 1)])
            weights = np.linalg.inv(np.asarray(rows))  # Taylor coefficients D_n = Σ_k W[n,k] (g_k − g_s)
            lo, hi = min(i_s, i_t), max(i_s, i_t)
            lam = st.lambdas[lo : hi + 1].reshape((-1,) + (1,) * (x_s.dim() - 1))
            exponent = (st.L + st.S)[lo : hi + 1] - (st.L + st.S)[i_s]
            for n in range(1, len(others) + 1):
                coefficient = cumulative_trapezoid(torch.exp(exponent) * (lam - st.lambdas[i_s]) ** n, lam)[-1]
                derivative = sum(float(weights[n - 1, k]) * diffs[k] for k in range(len(others)))
                x_t = x_t - alpha_t * torch.exp(L_s - L_t) * coefficient.to(self.device) * derivative
        return x_t.to(self.dtype)


def integrate(
    update: V3Update,
    eps_fn,
    x: torch.Tensor,
    idx: np.ndarray,
    order: int,
    corrector: bool,
    lower_order_final: bool,
    progress=None,
) -> torch.Tensor:
    """Multistep predictor (+ corrector) over grid indices `idx` from `x` at idx[0]; returns x at idx[-1]."""
    history: list[tuple] = []
    steps = len(idx) - 1
    previous_order = 0
    for i in range(steps):
        eps = eps_fn(x, update.taus[idx[i]])
        if corrector and history:
            older = history[-previous_order:-1][::-1] if previous_order > 1 else []
            corrected = update(history[-1], [(x, eps, idx[i]), *older], idx[i])
            sigma = float(update.schedule.sigma(update.taus[idx[i]]))
            l_t = update.st.l[idx[i]].to(x.device, x.dtype)
            eps = eps + l_t * (corrected - x) / sigma  # keep N = σε̂ − l x: no extra model call
            x = corrected
        history.append((x, eps, idx[i]))
        used = min(order, len(history), steps - i if lower_order_final else order)
        previous_order = used
        x = update(history[-1], history[-used:-1][::-1] if used > 1 else [], idx[i + 1])
        history = history[-order - 1 :]
        if progress is not None:
            progress(i + 1, x)
    return x


@SAMPLERS.register("dpm-solver-v3")
class DPMSolverV3(ODESampler):
    """DPM-Solver-v3: multistep ODE solver built on the model's own empirical statistics (needs calibration)."""

    Config = DPMSolverV3Config
    needs_calibration: ClassVar[bool] = True
    calibration_samples: ClassVar[int] = CALIBRATION_SAMPLES

    def __init__(self, config: DPMSolverV3Config, scheduler_config: dict) -> None:
        super().__init__(config, scheduler_config)
        if config.statistics is None:
            raise PlanError(
                "sampler 'dpm-solver-v3' needs the model's empirical statistics: run "
                "`ditserve calibrate --sampler dpm-solver-v3 --config <model.yaml>`, which writes them beside the "
                "YAML and names them in plan.sampler.statistics"
            )
        if not Path(config.statistics).is_file():
            raise PlanError(
                f"sampler.statistics: {config.statistics!r} does not exist; run "
                "`ditserve calibrate --sampler dpm-solver-v3 --config <model.yaml>` to write it"
            )
        self.statistics = Statistics.load(config.statistics)

    def integrate(self, denoise, x, taus, progress):
        stats = self.statistics
        if tuple(stats.l.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"the statistics are for samples of shape {tuple(stats.l.shape[1:])}, this request's are "
                f"{tuple(x.shape[1:])}: calibrate at this size (`ditserve calibrate --sampler dpm-solver-v3`)"
            )
        idx = stats.index(self.noise_schedule.lam(taus))  # the steps snap to the statistics' grid
        update = V3Update(stats, self.noise_schedule, x.device, x.dtype)
        config = self.config
        return integrate(update, self.noise_fn(denoise), x, idx, config.order, config.corrector,
                         config.lower_order_final, progress)  # fmt: skip

    @classmethod
    def calibrate(cls, engine, samples: int, settings: dict[str, Any], directory: Path) -> dict[str, Any]:
        """Estimate the EMS on `samples` calibration requests; write them beside the YAML; return the field."""
        from safetensors.torch import save_file

        from ditserve.calibrate import SamplerRecorder, record

        recorder = StatisticsRecorder(cls.Config(statistics=None, steps=1), engine.model.scheduler_config)
        record(engine, SamplerRecorder(recorder), samples)
        path = (Path(directory) / f"{engine.config.model.name}-dpm-solver-v3.safetensors").resolve()
        save_file({k: v.float().contiguous() for k, v in recorder.result.items()}, str(path))
        return {"statistics": str(path)}


class StatisticsRecorder(ODESampler):
    """Not a registered sampler: runs calibration trajectories and estimates the EMS from them."""

    Config = DPMSolverV3Config

    def sample(self, denoise, noise, steps, generators, on_step, schedule=None):
        self.result = estimate_statistics(self.noise_fn(denoise), noise, self.noise_schedule)
        return noise


def estimate_statistics(
    eps_fn,
    noise: torch.Tensor,
    schedule: NoiseSchedule,
    grid: int = GRID_STEPS,
    probe: float = 1e-2,
    smoothing: int = 9,
) -> dict[str, torch.Tensor]:
    """EMS from trajectories started at `noise`, solved on the λ grid by DPM-Solver++(2M) (v3 with l = 1,
    s = b = 0). Each model call evaluates [x; x + δv] in one batch: (ε̂(x + δv) − ε̂(x))/δ ⊙ v is a Hutchinson
    estimate of the Jacobian diagonal."""
    import torch

    base = Statistics.degenerate(schedule, tuple(noise.shape[1:]), grid)
    update = V3Update(base, schedule, noise.device, noise.dtype)
    generator = torch.Generator().manual_seed(0)
    xs, epss, diags = [], [], []

    def probing(x, tau):
        v = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(x.device, x.dtype)
        eps, probed = eps_fn(torch.cat([x, x + probe * v]), tau).chunk(2)
        xs.append(x.double().cpu())
        epss.append(eps.double().cpu())
        diags.append((v * (probed - eps) / probe).double().cpu())
        return eps

    # predictor only, so that every recorded (x, ε̂) pair is a true model evaluation
    x = integrate(update, probing, noise, np.arange(grid + 1), order=2, corrector=False, lower_order_final=True)
    probing(x, update.taus[-1])
    x_all, eps_all = torch.stack(xs), torch.stack(epss)  # (grid + 1, samples, *shape)
    taus = schedule.tau(base.lambdas.numpy())
    shape = (-1,) + (1,) * (x_all.dim() - 1)
    sigma = torch.from_numpy(schedule.sigma(taus)).reshape(shape)
    alpha = torch.from_numpy(schedule.alpha(taus)).reshape(shape)
    l = smooth((sigma * torch.stack(diags)).mean(dim=1).clamp(*L_BOUNDS), smoothing)  # noqa: E741
    # s and b describe f with the l the solver will use (the smoothed one): fitted on the raw l's f instead,
    # they cost v3 3 dB on digits-dit at 5–8 steps
    f = (sigma * eps_all - l.unsqueeze(1) * x_all) / alpha
    step = float(base.lambdas[1] - base.lambdas[0])
    df = torch.gradient(f, spacing=step, dim=0)[0]
    f_mean, df_mean = f.mean(dim=1, keepdim=True), df.mean(dim=1, keepdim=True)
    covariance = ((f - f_mean) * (df - df_mean)).mean(dim=1)
    variance = ((f - f_mean) ** 2).mean(dim=1)
    # plain least squares (the paper's); s = 0 where f does not vary at all (pixels held at the clip bound)
    s = (covariance / variance.clamp_min(1e-12)).clamp(-S_BOUND, S_BOUND)
    b = df_mean[:, 0] - s * f_mean[:, 0]
    return {"lambdas": base.lambdas, "l": l, "s": smooth(s, smoothing), "b": smooth(b, smoothing)}


def smooth(values: torch.Tensor, width: int = 9) -> torch.Tensor:
    """Moving average over `width` neighbouring grid points: the statistics change slowly in λ, and a few
    calibration samples leave them noisy per point."""
    import torch.nn.functional as F

    grid = values.shape[0]
    rows = values.reshape(grid, -1).T.unsqueeze(1)  # (dims, 1, grid)
    padded = F.pad(rows, (width // 2, width // 2), mode="replicate")
    return F.avg_pool1d(padded, width, stride=1).squeeze(1).T.reshape(values.shape)
