"""ParaTAA (Tang, Tang, Luo, Wang, Chang, 2024, "Accelerating Parallel Sampling of Diffusion Models",
ICML 2024, arXiv 2402.09970).

Same fixed-point problem as ParaDiGMS (the DDIM trajectory X = G(X), G_j(X) = x_k + Σ_{i<j}(F_i(x_i) − x_i),
the points of a window evaluated in one batched model call per round), solved by *triangular Anderson
acceleration* (TAA) instead of plain Picard iteration X ← G(X).

Anderson acceleration is a multisecant quasi-Newton step: from the last `history` differences of the iterates
ΔX and of their residuals ΔR (R = G(X) − X) it takes X ← X + R − (ΔX + ΔR) γ with γ = argmin ‖R − ΔR γ‖. The
inverse Jacobian of this system is block lower triangular (point j depends only on the points before it);
asking the quasi-Newton matrix to be triangular as well gives each point j its own γ_j, fitted on the
residuals of the window's points up to j only (the paper's TAA). So:
- every point keeps the history of its own iterates and residuals across rounds, also while the window
  slides (a point that just entered the window has fewer; its γ uses as many differences as it has, which
  the points before it — older in the window — have too);
- safeguard: the first unfinished point takes the plain Picard update, which is exact since every point
  before it is final, so every round finishes at least one step and the solve ends within as many rounds as
  the sequential sampler has steps, whatever the acceleration does; a point with no history yet also takes
  the Picard update, and the fits are ridge-regularized against ill-conditioned differences.
A point is final once its residual is at most `tolerance` times σ there, σ floored at 0.2 (ParaDiGMS's criterion,
`paradigms.SIGMA_FLOOR`).

Tried on digits-dit at 50 steps, guidance 4, 10 images, where ParaTAA needs 7 rounds at ≥ 40 dB against its own
sequential solve (tolerance 0.1: 45.4 dB; 0.2: 7 rounds, 38.0 dB; 0.3: 6 rounds, 33.9 dB) and ParaDiGMS 9; none
reached 6 rounds at ≥ 40 dB robustly: history 1 / 2 / 3 at tolerance 0.15 (7 rounds, 41.1–41.5 dB); the fits in
float64 (unchanged); window 16 / 25 (8–9 rounds); the paper's composed equations
x_j = (Π a) x_k + Σ (Π a) b x̂₀ instead of the cumulative sum (8 rounds at 38.7 dB, tolerance 0.1) and lower
orders 10 / 20 (10 / 8 rounds); stopping on the one-step residual as Tang et al.'s code does (6 rounds at 18.6
dB); final points keeping the Picard value, as their code does (tolerance 0.2: 6–7 rounds at 39.2–39.7 dB, but
1.3–2.5× the error on the guided Gaussian problem of the tests); points started at (σ_j/σ_T)·x_T (6 rounds,
38.4 dB); restarting a point's history when its residual grows (unchanged). Picard-valued final points and that
start together, history 2, tolerance 0.2: 6 rounds at 40.1–40.2 dB (ridge 1e-6–1e-2; history 3: 39.7–39.9), at
the target's edge and a trade against the Gaussian problem, so not taken. The last points finish one or two per
round: their threshold is absolute (σ below the floor), and their residual carries the error of every point
before them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ditserve.registry import SAMPLERS
from ditserve.sampling.ode import ODESamplerConfig
from ditserve.sampling.paradigms import PicardSampler

if TYPE_CHECKING:
    import torch

TOLERANCE = 0.1
"""Default `tolerance` (relative to σ): Anderson acceleration converges in fewer rounds than Picard iteration,
so it affords a tighter tolerance than ParaDiGMS for the same rounds (benchmarks/results/sampling.md)."""


class ParaTAAConfig(ODESamplerConfig):
    name: Literal["parataa"] = "parataa"
    steps: int = Field(50, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""
    window: int | None = Field(None, ge=1, le=1000)
    """Steps evaluated together in one batched call; None: every remaining step (the paper's setting)."""
    history: int = Field(3, ge=1, le=16)
    """m: the differences of past iterates each Anderson step mixes (the paper keeps m + 1 = 2–5 iterates)."""
    tolerance: float = Field(TOLERANCE, gt=0.0, le=1.0)
    """A point is final once its root-mean-square residual is at most this times σ at its timestep (as ParaDiGMS)."""
    regularization: float = Field(1e-6, ge=0.0, le=1.0)
    """Ridge term of the least-squares fits (relative to their scale), for stability."""


@SAMPLERS.register("parataa")
class ParaTAA(PicardSampler):
    """ParaTAA: the parallel-sampling fixed point solved by triangular Anderson acceleration."""

    Config = ParaTAAConfig

    def integrate(self, denoise, x, taus, progress):
        import torch

        steps = len(taus) - 1
        window = self.config.window or steps
        a, b = self.step_terms(taus)
        limits = self.thresholds(taus)
        xs = [x] * (steps + 1)
        memory: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # point → its (iterate, residual), oldest first
        start = 0
        while start < steps:
            end = min(start + window, steps)
            deltas = self.updates(denoise, xs[start:end], taus[start:end], (a[start:end], b[start:end]))
            current = torch.stack(xs[start + 1 : end + 1])  # (points, batch, ...): points start+1 … end
            residual = xs[start] + torch.cumsum(torch.stack(deltas), dim=0) - current
            for j, point in enumerate(range(start + 1, end + 1)):
                kept = [*memory.get(point, []), (current[j], residual[j])]
                memory[point] = kept[-self.config.history - 1 :]
            new = self.triangular_anderson([memory[k] for k in range(start + 1, end + 1)], current, residual)
            new[0] = current[0] + residual[0]  # safeguard: the first unfinished point by Picard (exact)
            sizes = residual.pow(2).flatten(2).mean(dim=2).sqrt().amax(dim=1)  # per point, worst image
            advance = 1
            while advance < end - start and float(sizes[advance]) <= limits[start + advance + 1]:
                advance += 1
            for j in range(end - start):
                xs[start + 1 + j] = new[j]
            for k in range(end + 1, min(end + advance, steps) + 1):
                xs[k] = xs[end]  # points entering the window start from the newest estimate
            for k in range(start + 1, start + advance + 1):
                memory.pop(k, None)  # final: its history is no longer needed
            start += advance
            progress(start, xs[start])
        return xs[steps]

    def triangular_anderson(self, memories, current: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """TAA's update of the window's points: point j mixes d_j = min(history, iterates − 1) differences, γ_j
        fitted per image on the residual differences of points ≤ j; d_j = 0 is the Picard update.

        Points enter the window in order, so d is non-increasing along it and the points before j have at least
        d_j differences from the same rounds: their newest d_j columns are valid where point j uses them."""
        import torch

        counts = [len(m) - 1 for m in memories]
        width = max(counts)
        new = current + residual
        if width == 0:
            return new
        points = len(memories)
        dx = current.new_zeros((points, *current.shape[1:2], current[0, 0].numel(), width))  # newest difference first
        df = torch.zeros_like(dx)
        for j, m in enumerate(memories):
            for c in range(counts[j]):
                dx[j, ..., c] = (m[-1 - c][0] - m[-2 - c][0]).flatten(1)
                df[j, ..., c] = (m[-1 - c][1] - m[-2 - c][1]).flatten(1)
        f = residual.flatten(2).unsqueeze(-1)  # (points, batch, dims, 1)
        gram = torch.cumsum(df.transpose(-1, -2) @ df, dim=0)  # (points, batch, width, width): Σ over points ≤ j
        rhs = torch.cumsum(df.transpose(-1, -2) @ f, dim=0)
        for d in sorted(set(counts) - {0}):
            rows = [j for j in range(points) if counts[j] == d]
            g, r = gram[rows][..., :d, :d], rhs[rows][..., :d, :]
            scale = g.diagonal(dim1=-2, dim2=-1).mean(dim=-1)[..., None, None]
            eye = torch.eye(d, dtype=g.dtype, device=g.device)
            gamma = torch.linalg.solve(g + (self.config.regularization * scale + 1e-30) * eye, r)
            step = ((dx[rows][..., :d] + df[rows][..., :d]) @ gamma).squeeze(-1)
            new[rows] = new[rows] - step.reshape(new[rows].shape)
        return new
