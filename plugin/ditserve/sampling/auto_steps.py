"""auto-steps: the fewest steps at which a sampler still meets a quality target on a model (in the spirit
of StepSaver: Yu et al., 2024, "StepSaver: Predicting Minimum Denoising Steps for Diffusion Model
Image Generation", arXiv 2408.02054, which learns to predict that number; here it is measured).

`ditserve calibrate --sampler NAME --auto-steps PSNR` runs the sampler at its configured steps (the
full-step reference) on a few fixed-seed calibration requests, then bisects the step count for the
fewest steps whose images reach the PSNR target (dB, mean over the images) against that reference,
and stores it as the sampler's `steps` in the model's YAML. Bisection assumes quality grows with the
steps, which holds for the ODE samplers in practice; every count it returns was measured to meet the
target on the calibration requests.
"""

from __future__ import annotations

from typing import Any

from ditserve.calibrate import SamplerRecorder, record
from ditserve.registry import SAMPLERS


def fewest_steps(engine, sampler_spec: dict[str, Any], target_psnr: float, samples: int) -> int:
    """The fewest steps ≤ the configured ones whose images reach `target_psnr` dB against the full-step images."""
    import torch

    from ditserve.quality import psnr

    config = SAMPLERS.parse(sampler_spec, "plan.sampler")
    sampler = SamplerRecorder(SAMPLERS.get(config.name)(config, engine.model.scheduler_config))
    full = config.steps

    def images(steps: int) -> torch.Tensor:
        return torch.cat([r.images for r in record(engine, sampler, samples, steps)]) * 2 - 1

    reference = images(full)
    low, high = 1, full  # high always meets the target
    while low < high:
        middle = (low + high) // 2
        if float(psnr(images(middle), reference).mean()) >= target_psnr:
            high = middle
        else:
            low = middle + 1
    return high
