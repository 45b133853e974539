"""Where a request is in its denoising: the hook on the transformer every cache reads it from.

Caches decide by the call's index in the request (FORA's "every N steps") or by how far the noise
level has fallen (Δ-DiT's boundary, SmoothCache's curves, PAB's window). Families scale timesteps
differently (DiT 0–999, Flux's transformer σ ∈ [0, 1]), so the level is read relative to the
request's first call: t/t₀, 1 at the first call, falling towards 0. The cache resets it before every
request.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.hooks import ModelHook


class DenoisingProgress(ModelHook):
    """A pre-forward hook on the transformer: counts its calls and reads each call's `timestep` keyword."""

    def __init__(self, on_call: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.on_call = on_call
        """Called after every call's index and level are updated (a cache's per-call decision)."""
        self.reset()

    def reset(self) -> None:
        self.call = -1
        """Index of the current transformer call in this request (one call per step with batched CFG)."""
        self.first_timestep: float | None = None
        self.timestep: float | None = None

    def pre_forward(self, module, *args, **kwargs):
        self.call += 1
        timestep = kwargs.get("timestep")
        if isinstance(timestep, torch.Tensor) and timestep.numel():
            self.timestep = float(timestep.reshape(-1)[0])
            if self.first_timestep is None:
                self.first_timestep = self.timestep
        if self.on_call is not None:
            self.on_call()
        return args, kwargs

    @property
    def remaining(self) -> float:
        """t/t₀: the noise level left relative to the first call (1 there, and while no timestep is known)."""
        if not self.first_timestep or self.timestep is None:
            return 1.0
        return self.timestep / self.first_timestep

    @property
    def progress(self) -> float:
        """1 − t/t₀: how far the request has come, in [0, 1]."""
        return 1.0 - self.remaining

    @property
    def level(self) -> float:
        """1000·t/t₀: the noise level on diffusers' 0–1000 timestep scale (1000 at the first call)."""
        return 1000.0 * self.remaining
