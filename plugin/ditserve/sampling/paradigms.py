"""ParaDiGMS (Shih, Belkhale, Ermon, Sadigh, Anari, 2023, "Parallel Sampling of Diffusion Models",
NeurIPS 2023, arXiv 2305.16317).

The sequential sampler here is DDIM's deterministic update, written as the first-order exponential
integrator x_{j+1} = F_j(x_j) = (σ_{j+1}/σ_j) x_j + α_{j+1}(1 − e^{−h_j}) x̂₀(x_j, τ_j) (for flow models it is
exactly the flow Euler step). Sampling is the fixed point of the whole trajectory x_{j+1} = x_k + Σ_{i=k..j}
(F_i(x_i) − x_i), which Picard iteration solves: guess every point of a window of `window` steps,
evaluate the model at all of them in ONE batched call, rebuild every point from the cumulative sum of
the updates, and repeat. Points whose change falls below `tolerance` times the noise scale σ at that point
(floored at `SIGMA_FLOOR`) are final (the paper's criterion: an error small against the noise still to be
removed there does not show in the sample); the window slides past them (at least one step per round: the
first point is exact after one round) and new points start as copies of the last. Each round is one
sequential model call, so with enough parallel hardware the latency is the rounds, not the steps; the stats'
`model_evaluations` counts the rounds and `timestep_evaluations` the total work. On a CPU that runs the batch
no faster than its members, the wall time grows instead: a GPU (or idle cores) is what turns fewer rounds into
speed. `window: 1` is the sequential sampler itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from ditserve.registry import SAMPLERS
from ditserve.sampling.ode import ODESampler, ODESamplerConfig

if TYPE_CHECKING:
    import torch


TOLERANCE = 0.2
"""Default `tolerance` (relative to σ), chosen by a fidelity target: ParaDiGMS must reproduce its own sequential
solve (`window: 1`) to ≥ 40 dB PSNR at 20 and 50 steps on the digits models, in as few rounds as that allows.
The benchmark writes the rounds-vs-fidelity frontier (benchmarks/results/sampling.md); the sweep that chose it
(guidance 4, 10 images, window 16, σ floored at SIGMA_FLOOR): 0.1 / 0.2 / 0.3 gave digits-dit 50 steps 11 / 9 / 8
rounds at 49 / 41 / 37 dB and 20 steps 9 / 8 / 7 at 56 / 46 / 40 dB; digits-flow 50 steps 13 / 11 / 10 at
61 / 50 / 43 dB and 20 steps 11 / 10 / 9 at 65 / 59 / 51 dB: 0.3 misses the target on digits-dit."""


SIGMA_FLOOR = 0.2
"""Below this σ a point's threshold stops shrinking: `tolerance` × SIGMA_FLOOR, in image units. Scaling with σ bounds
an error against the noise still to be removed, but at the last points σ is 0.001 (flow) to 0.006 (digits-dit), so
0.2σ asks for changes 30× below the 40 dB target's RMS error of 0.02: the last points then finish one per round,
by sequential propagation alone (traced: 20 steps on digits-flow, ParaDiGMS's fronts 16, 18, 19, 20 and ParaTAA's
18, 19, 20). Tang et al. stop on an absolute residual beside the relative one for the same reason. Sweep (10 images,
guidance 4, rounds at 20 / 50 steps with tolerance 0.2; the frontier in benchmarks/results/sampling.md): floor 0
→ ParaDiGMS dit 9 / 10, flow 11 / 13, ParaTAA dit 7 / 8, flow 8 / 10; floor 0.2 → ParaDiGMS dit 8 / 9 at 46 / 41
dB, flow 10 / 11 at 59 / 50 dB, ParaTAA dit 6 / 7, flow 7 / 7; 0.05 and 0.1 sit between. Shared by ParaTAA."""


class ParaDiGMSConfig(ODESamplerConfig):
    name: Literal["paradigms"] = "paradigms"
    steps: int = Field(50, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""
    window: int = Field(16, ge=1, le=1000)
    """Steps evaluated together in one batched model call (1: the plain sequential sampler)."""
    tolerance: float = Field(TOLERANCE, gt=0.0, le=1.0)
    """A point is final once its root-mean-square change in a round is at most this times σ at its timestep."""


class PicardSampler(ODESampler):
    """Shared machinery of the parallel samplers: the DDIM step map, windows of steps in one call."""

    Config = ParaDiGMSConfig

    @property
    def parallel_in_time(self) -> bool:
        return self.config.window != 1

    def step_terms(self, taus: np.ndarray):
        """Per step j: (σ_{j+1}/σ_j, α_{j+1}(1 − e^{−h_j})), so that F_j(x) = a_j x + b_j x̂₀(x, τ_j)."""
        ns = self.noise_schedule
        sigma, alpha, lam = ns.sigma(taus), ns.alpha(taus), ns.lam(taus)
        return sigma[1:] / sigma[:-1], alpha[1:] * -np.expm1(-(lam[1:] - lam[:-1]))

    def updates(self, denoise, points: list[torch.Tensor], taus: np.ndarray, terms) -> list[torch.Tensor]:
        """F_j(x_j) − x_j for every point, from one batched model call at all of them."""
        import torch

        a, b = terms
        batch = points[0].shape[0]
        x = torch.cat(points)
        t = torch.cat([torch.full((batch,), float(tau), device=x.device) for tau in taus])
        outputs = denoise(x, t).chunk(len(points))
        out = []
        for j, (point, output) in enumerate(zip(points, outputs, strict=True)):
            x0 = self.noise_schedule.data(output, point, float(taus[j]))
            out.append((a[j] - 1) * point + b[j] * x0)
        return out

    def sequential(self, denoise, x, taus, progress):
        terms = self.step_terms(taus)
        for j in range(len(taus) - 1):
            x = x + self.updates(denoise, [x], taus[j : j + 1], (terms[0][j : j + 1], terms[1][j : j + 1]))[0]
            progress(j + 1, x)
        return x

    @staticmethod
    def change(new: torch.Tensor, old: torch.Tensor) -> float:
        """Root-mean-square change of the worst image of the batch."""
        return float((new - old).pow(2).flatten(1).mean(dim=1).sqrt().max())

    def thresholds(self, taus: np.ndarray) -> np.ndarray:
        """Per point of `taus`: the change below which it is final, `tolerance` × σ there (Shih et al. §3.3), σ
        floored at `SIGMA_FLOOR`."""
        return self.config.tolerance * np.maximum(self.noise_schedule.sigma(taus), SIGMA_FLOOR)


@SAMPLERS.register("paradigms")
class ParaDiGMS(PicardSampler):
    """ParaDiGMS: Picard iterations over a sliding window of DDIM steps, the window in one batched call."""

    def integrate(self, denoise, x, taus, progress):
        config = self.config
        if config.window == 1:
            return self.sequential(denoise, x, taus, progress)
        steps = len(taus) - 1
        a, b = self.step_terms(taus)
        limits = self.thresholds(taus)
        xs = [x] * (steps + 1)
        start = 0
        while start < steps:
            end = min(start + config.window, steps)
            deltas = self.updates(denoise, xs[start:end], taus[start:end], (a[start:end], b[start:end]))
            new, total, advance = [], xs[start], 0
            for delta in deltas:
                total = total + delta
                new.append(total)
            converged = True
            for j, point in enumerate(new):
                if converged and (j == 0 or self.change(point, xs[start + j + 1]) <= limits[start + j + 1]):
                    advance = j + 1
                else:
                    converged = False
                xs[start + j + 1] = point
            for k in range(end + 1, min(end + advance, steps) + 1):
                xs[k] = xs[end]  # new window points start from the newest estimate
            start += advance
            progress(start, xs[start])
        return xs[steps]
