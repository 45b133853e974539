"""A tiny family loop for a diffusers hook installed by hand, with the timestep callback a pipeline gives."""

from __future__ import annotations

from collections.abc import Callable

from .conftest import FamilyLoop


def library_loop(family: str) -> tuple[FamilyLoop, Callable[[], float]]:
    """The loop, and a `current_timestep_callback` giving the call's timestep on diffusers' 0–1000 scale
    (Flux's transformer takes σ = t/1000), as `pipe.current_timestep` would."""
    loop = FamilyLoop(family)
    current = [0.0]
    scale = 1000.0 if family == "flux" else 1.0

    def keep(module, args, kwargs):
        current[0] = float(kwargs["timestep"].reshape(-1)[0]) * scale

    loop.model.transformer.register_forward_pre_hook(keep, with_kwargs=True)
    return loop, lambda: current[0]
