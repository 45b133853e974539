"""What the own SDE solvers' tests share: the law of their samples on the analytic Gaussian case."""

from __future__ import annotations

import torch
from gaussian_data import GaussianData


def assert_samples_the_data_distribution(cls, config, scheduler_config: dict, steps: int = 200) -> None:
    """1000 samples of Gaussian data (16 dimensions) from pure noise in 200 steps: per-dimension mean and standard
    deviation within 0.05 (mean) and 12% (std) of the data's (measured on 4000: 0.01 and 4-5%; SDE solvers converge
    slowly: at 50 steps the std still falls 14-26% short). A step that injects the wrong amount of noise, or
    none, misses the std; a wrong drift misses the mean."""
    data = GaussianData(scheduler_config)
    noise = data.noise(1000, seed=3)
    generators = [torch.Generator().manual_seed(k) for k in range(noise.shape[0])]
    out = cls(config, scheduler_config).sample(data.denoise, noise, steps, generators, lambda *a: None)
    assert float((out.mean(dim=0) - data.mu).abs().max()) < 0.05
    assert float((out.std(dim=0) / data.std - 1).abs().max()) < 0.12


def assert_reproducible_per_image(cls, config, scheduler_config: dict) -> None:
    """Same seeds, same samples; an image is the same alone as in a batch; other seeds, other samples."""
    data = GaussianData(scheduler_config)
    noise = data.noise(3)

    def sample(x, seeds):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return cls(config, scheduler_config).sample(data.denoise, x, 10, generators, lambda *a: None)

    batch = sample(noise, [1, 2, 3])
    assert torch.equal(batch, sample(noise, [1, 2, 3]))
    assert torch.equal(batch[1:2], sample(noise[1:2], [2]))
    assert not torch.allclose(batch, sample(noise, [4, 5, 6]))
