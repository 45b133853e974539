"""Calibration runs: sample a few images with the unquantized model and record what quantizers need.

Statistics come from real sampling trajectories (every step of a short sampler run, guidance on),
not from random inputs, because a DiT's activations change with the timestep: the ranges seen at
step 1 and step 50 differ, and a quantizer must cover both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from ditserve.models.base import LoadedModel

log = logging.getLogger(__name__)

CALIBRATION_PROMPTS = ("a photo of a cat", "a landscape at dusk", "a red car", "a bowl of fruit")
"""Prompts for text-conditioned families (class-conditional ones cycle through their classes)."""


def sample_inputs(
    model: LoadedModel, samples: int, steps: int, guidance: float = 4.0, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Run `samples` images through a DDIM loop; return the transformer inputs (x, t, kwargs) of every step."""
    from ditserve.registry import SAMPLERS

    adapter = model.adapter
    if adapter.conditioning == "class":
        classes = max(1, len(model.id2label) or 10)
        subjects: list = [k % classes for k in range(samples)]
    else:
        subjects = [CALIBRATION_PROMPTS[k % len(CALIBRATION_PROMPTS)] for k in range(samples)]
    sampler_name = "ddim" if "ddim" in SAMPLERS else "none"
    sampler = SAMPLERS.get(sampler_name)(SAMPLERS.parse({"name": sampler_name, "steps": steps}, "calibration"),
                                         model.scheduler_config)  # fmt: skip
    conditioning = adapter.condition(model, subjects, guidance=True)
    kwargs = {key: torch.cat([value, conditioning.uncond[key]]) for key, value in conditioning.cond.items()}
    height, width = adapter.default_size(model)
    shape = adapter.latent_shape(model, height, width)
    generators = [torch.Generator().manual_seed(seed + k) for k in range(samples)]
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(model.device, model.dtype)
    recorded = []

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        both = torch.cat([x, x])
        recorded.append((both, t, kwargs))
        cond, uncond = adapter.predict(model, both, t, kwargs).chunk(2)
        return uncond + guidance * (cond - uncond)

    with torch.inference_mode():
        sampler.sample(denoise, noise, steps, generators, lambda *_: None, adapter.schedule_kwargs(model, shape))
    return recorded


@contextmanager
def record_linear_inputs(linears: dict[str, nn.Linear], record: Callable[[str, torch.Tensor], None]):
    """Call `record(name, input)` for every forward of each named linear while the context is open."""
    handles = [
        module.register_forward_pre_hook(lambda _m, args, name=name: record(name, args[0]))
        for name, module in linears.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def input_absmax(
    model: LoadedModel, linears: dict[str, nn.Linear], samples: int, steps: int
) -> dict[str, torch.Tensor]:
    """Per input channel, the largest |activation| each linear saw in calibration (SmoothQuant's statistic)."""
    absmax: dict[str, torch.Tensor] = {}

    def record(name: str, x: torch.Tensor) -> None:
        seen = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
        absmax[name] = torch.maximum(absmax[name], seen) if name in absmax else seen

    with record_linear_inputs(linears, record):
        sample_inputs(model, samples, steps)
    log.info("calibrated %d linear layers on %d samples × %d steps", len(absmax), samples, steps)
    return absmax


def smoothing_factors(absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s_j = max|X_j|^α / max|W_j|^(1−α): divide activations by s, multiply weights by it,
    moving quantization difficulty from activation outlier channels to the weights."""
    w_max = weight.detach().abs().amax(dim=0).float().clamp(min=1e-5)
    return (absmax.clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
