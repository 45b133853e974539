"""DC-Solver (Zhao, Wang, Zhou, Lu, 2024, "DC-Solver: Improving Predictor-Corrector Diffusion Sampler via
Dynamic Compensation", ECCV 2024, arXiv 2409.03755).

The base is UniPC (Zhao et al., 2023): a multistep predictor (UniP) to the next timestep, one model call
there, and a corrector (UniC) that re-solves the step with that new model output, all in the data
prediction x̂₀ and λ = log(α/σ). The corrector moves x_t, but the model output kept for the next steps
is the one taken at the uncorrected point: a misalignment that grows at few steps. DC-Solver
compensates it: before each step the newest x̂₀ is replaced by the Lagrange polynomial through the last
`dc_order + 1` outputs, evaluated at τ′ = ρ τᵢ + (1 − ρ) τᵢ₋₁. The ratios ρ (one per step, for each step
count) are searched on a few calibration samples against a reference trajectory of 5× the steps
(`ditserve calibrate --sampler dc-solver`, golden-section search per step) and stored in the YAML. With
every ρ = 1 it is UniPC. A request with a step count that was not calibrated uses the nearest calibrated
count's ratios, resampled over the steps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from ditserve.errors import PlanError
from ditserve.registry import SAMPLERS
from ditserve.sampling.ode import ODESampler, ODESamplerConfig

if TYPE_CHECKING:
    import torch


class DCSolverConfig(ODESamplerConfig):
    name: Literal["dc-solver"] = "dc-solver"
    steps: int = Field(10, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""
    order: int = Field(2, ge=1, le=3)
    """Order of the UniPC predictor (the corrector adds one)."""
    variant: Literal["bh1", "bh2"] = "bh2"
    """UniPC's B(h): bh1 = h, bh2 = e^h − 1 (diffusers' default)."""
    dc_order: int = Field(2, ge=1, le=3)
    """Degree of the compensating Lagrange polynomial (it needs `dc_order + 1` past outputs)."""
    lower_order_final: bool = True
    """Lower the order over the last steps (stabler at few steps)."""
    ratios: dict[int, list[float]] | None = None
    """Compensation ratio per step, per step count; written by `ditserve calibrate --sampler dc-solver`."""
    search_range: tuple[float, float] = (0.5, 1.5)
    """Calibration: the interval each ratio is searched in."""
    calibrate_steps: list[int] = Field([5, 8, 10, 15, 20], min_length=1, max_length=16)
    """Calibration: the step counts to search ratios for."""


@SAMPLERS.register("dc-solver")
class DCSolver(ODESampler):
    """DC-Solver: UniPC with dynamically compensated model outputs (ratios searched on calibration samples)."""

    Config = DCSolverConfig
    needs_calibration: ClassVar[bool] = True

    def __init__(self, config: DCSolverConfig, scheduler_config: dict, calibrating: bool = False) -> None:
        super().__init__(config, scheduler_config)
        if not config.ratios and not calibrating:
            raise PlanError(
                "sampler 'dc-solver' needs compensation ratios searched on this model: run "
                "`ditserve calibrate --sampler dc-solver --config <model.yaml>`, which writes them into "
                "plan.sampler.ratios"
            )

    def ratios_for(self, steps: int) -> list[float]:
        """The calibrated ratios for `steps`, or the nearest calibrated count's resampled over the steps."""
        table = self.config.ratios or {}
        if steps in table:
            return list(table[steps])
        nearest = min(table, key=lambda n: (abs(n - steps), n))
        return list(np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, nearest), table[nearest]))

    def integrate(self, denoise, x, taus, progress):
        ratios = self.ratios_for(progress.total)[progress.first : progress.first + len(taus) - 1]
        return self.solve(self.data_fn(denoise), x, taus, ratios, progress)

    # -- UniPC with compensation -----------------------------------------------------------------

    def solve(self, data_fn, x, taus, ratios, progress=None, search=None) -> torch.Tensor:
        """Integrate over `taus`; `search(i, x, outputs, times, order, corrector)` may choose ratio i first."""
        steps = len(taus) - 1
        outputs, times = [data_fn(x, taus[0])], [float(taus[0])]
        for i in range(1, steps + 1):
            order = min(self.config.order, i, steps + 1 - i if self.config.lower_order_final else i)
            corrector = i < steps  # the last step's corrector would need one more model call
            if search is not None:
                ratios[i - 1] = search(i, x, outputs, times, order, corrector)
            outputs = self.compensated(outputs, times, ratios[i - 1])  # kept: later steps build on it
            x, output = self.step(x, outputs, times, taus[i], order, corrector, data_fn)
            if i < steps:
                keep = self.config.order + self.config.dc_order
                outputs, times = [*outputs, output][-keep:], [*times, float(taus[i])][-keep:]
            if progress is not None:
                progress(i, x)
        return x

    def compensated(self, outputs: list, times: list[float], ratio: float) -> list:
        """`outputs` with the newest replaced by the Lagrange interpolation at ρ τᵢ + (1 − ρ) τᵢ₋₁."""
        k = self.config.dc_order + 1
        if ratio == 1.0 or len(outputs) < k:
            return outputs
        target = ratio * times[-1] + (1 - ratio) * times[-2]
        nodes = times[-k:]
        value = 0
        for i, (t_i, output) in enumerate(zip(nodes, outputs[-k:], strict=True)):
            weight = math.prod((target - t_j) / (t_i - t_j) for j, t_j in enumerate(nodes) if j != i)
            value = value + weight * output
        return [*outputs[:-1], value]

    def step(self, x, outputs, times, tau_t, order, corrector, data_fn):
        """UniP from the newest point to `tau_t`, then (with `corrector`) the model there and UniC.

        Returns x at `tau_t` and the model's x̂₀ at the predicted point (None without the corrector)."""
        import torch

        ns = self.noise_schedule
        tau_s = times[-1]
        lam_s, lam_t = float(ns.lam(tau_s)), float(ns.lam(tau_t))
        alpha_t, sigma_s, sigma_t = float(ns.alpha(tau_t)), float(ns.sigma(tau_s)), float(ns.sigma(tau_t))
        h = lam_t - lam_s
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = hh if self.config.variant == "bh1" else h_phi_1
        m_s = outputs[-1]
        rks, diffs = [], []
        for i in range(1, order):
            rk = (float(ns.lam(times[-1 - i])) - lam_s) / h
            rks.append(rk)
            diffs.append((outputs[-1 - i] - m_s) / rk)
        rks.append(1.0)
        h_phi_k, factorial, rhs = h_phi_1 / hh - 1, 1, []
        for i in range(1, order + 1):
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r = np.array([[rk ** (i - 1) for rk in rks] for i in range(1, order + 1)])
        base = sigma_t / sigma_s * x - alpha_t * h_phi_1 * m_s
        x_t = base
        if diffs:
            rhos_p = [0.5] if order == 2 else np.linalg.solve(r[:-1, :-1], rhs[:-1])
            x_t = base - alpha_t * b_h * sum(float(rho) * d for rho, d in zip(rhos_p, diffs, strict=True))
        if not corrector:
            return x_t, None
        m_t = data_fn(x_t, tau_t)
        rhos_c = [0.5] if order == 1 else np.linalg.solve(r, rhs)
        correction = sum((float(rho) * d for rho, d in zip(rhos_c[:-1], diffs, strict=True)), torch.zeros_like(x))
        return base - alpha_t * b_h * (correction + float(rhos_c[-1]) * (m_t - m_s)), m_t

    # -- calibration -------------------------------------------------------------------------------

    @classmethod
    def calibrate(cls, engine, samples: int, settings: dict[str, Any], directory: Path) -> dict[str, Any]:
        """Search the ratios for each of `calibrate_steps` on `samples` calibration requests."""
        from ditserve.calibrate import SamplerRecorder, record

        config = cls.Config(**{k: v for k, v in settings.items() if k != "ratios"})
        searcher = RatioSearch(config, engine.model.scheduler_config, calibrating=True)
        record(engine, SamplerRecorder(searcher), samples)
        return {"ratios": searcher.found}


class RatioSearch(DCSolver):
    """Not a registered sampler: searches the ratios inside one engine run (the model is only there)."""

    def sample(self, denoise, noise, steps, generators, on_step, schedule=None):
        data_fn = self.data_fn(denoise)
        self.found = {}
        for count in self.config.calibrate_steps:
            self.found[count] = search_ratios(self, data_fn, noise, self.taus(count, schedule))
        return noise


def search_ratios(solver: DCSolver, data_fn, noise: torch.Tensor, taus: np.ndarray, refine: int = 5) -> list[float]:
    """Ratios that bring each step closest (MSE) to a reference trajectory of 5× the steps (ρ = 1 there)."""
    fine = np.concatenate([np.linspace(a, b, refine + 1)[:-1] for a, b in zip(taus[:-1], taus[1:], strict=True)])
    fine = np.append(fine, taus[-1])
    reference = {}

    def keep(done, x):
        if done % refine == 0:
            reference[done // refine] = x

    solver.solve(data_fn, noise, fine, [1.0] * (len(fine) - 1), keep)
    low, high = solver.config.search_range
    golden = (math.sqrt(5) - 1) / 2

    def search(i, x, outputs, times, order, corrector):
        if len(outputs) < solver.config.dc_order + 1:
            return 1.0

        def loss(ratio):
            moved, _ = solver.step(x, solver.compensated(outputs, times, ratio), times, taus[i], order, corrector,
                                   data_fn)  # fmt: skip
            return float(((moved - reference[i]) ** 2).mean())

        a, b = low, high
        c, d = b - golden * (b - a), a + golden * (b - a)
        fc, fd = loss(c), loss(d)
        for _ in range(6):
            if fc < fd:
                b, d, fd = d, c, fc
                c = b - golden * (b - a)
                fc = loss(c)
            else:
                a, c, fc = c, d, fd
                d = a + golden * (b - a)
                fd = loss(d)
        best = min((fc, c), (fd, d), (loss(1.0), 1.0))
        return round(best[1], 4)

    ratios = [1.0] * (len(taus) - 1)
    solver.solve(data_fn, noise, taus, ratios, search=search)
    return ratios
