"""What the own solvers' tests share: v3 statistics that make it DPM-Solver++ (so v3's machinery runs without a
calibration), and the check that each makes digits on the trained digits model at few steps."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from gaussian_data import FLOW_CONFIG, VP_CONFIG, GaussianData, run
from safetensors.torch import save_file

from ditserve.quality import load_classifier
from ditserve.request import GenerationRequest

CONFIGS = pytest.mark.parametrize("scheduler_config", [VP_CONFIG, FLOW_CONFIG], ids=["epsilon", "flow"])
"""Run an analytic check on a diffusion (epsilon) and a flow-matching schedule."""


def plus_plus_statistics(scheduler_config: dict, shape: tuple[int, ...], path) -> str:
    """A statistics file with l = 1, s = b = 0 (DPM-Solver++'s update) for samples of `shape`; its path."""
    from ditserve.sampling.dpm_solver_v3 import Statistics
    from ditserve.sampling.ode import NoiseSchedule

    stats = Statistics.degenerate(NoiseSchedule(scheduler_config), shape)
    save_file({"lambdas": stats.lambdas.float(), "l": stats.l.float(), "s": stats.s.float(), "b": stats.b.float()},
              str(path))  # fmt: skip
    return str(path)


class MakesDigits:
    """Mixin for an own solver's `TestXxx`: through the engine on the trained digits model at few steps, the
    classifier reads the asked digit in ≥ 70% of the images. `digits_plan(statistics)` gives the plan."""

    parallel: ClassVar[bool] = False
    """A parallel sampler evaluates a whole window per call: it runs 12 steps on 5 images."""

    def digits_plan(self, statistics: str) -> dict:
        raise NotImplementedError

    def test_makes_digits_through_the_engine(self, digits_engine, digits_statistics):
        steps, classes = (12, 5) if self.parallel else (6, 10)
        plan = self.digits_plan(digits_statistics)
        requests = [GenerationRequest(class_label=c, seed=c, steps=steps, sampler=plan) for c in range(classes)]
        seen = []
        results = digits_engine.generate_batch(requests, on_progress=lambda event: seen.append(event.step))
        images = torch.cat([r.images for r in results])
        with torch.no_grad():
            predicted = load_classifier()(images * 2 - 1).argmax(dim=1)
        assert float((predicted == torch.arange(classes)).float().mean()) >= 0.7
        stats = results[0].stats
        assert stats.timestep_evaluations >= steps and seen[-1] == steps
        if self.parallel:
            assert stats.model_evaluations < steps  # several steps per batched call
        else:
            assert stats.model_evaluations == stats.timestep_evaluations == 6


def assert_reaches_the_sequential_result_in_fewer_rounds(cls, config, scheduler_config: dict, tolerance: float | None):
    """A parallel sampler on the analytic Gaussian case, 50 steps: at the default tolerance (relative to σ) within
    40 dB (over a range of 2) of the sequential sampler; at a tight one, within that tolerance everywhere; in at
    most half the sequential rounds either way."""
    from ditserve.sampling.paradigms import ParaDiGMS, ParaDiGMSConfig

    data = GaussianData(scheduler_config)
    noise = data.noise(4)
    sequential = run(ParaDiGMS(ParaDiGMSConfig(window=1), scheduler_config), data, noise, 50)
    calls: list[int] = []
    config = config if tolerance is None else config.model_copy(update={"tolerance": tolerance})
    out = run(cls(config, scheduler_config), data, noise, 50, calls)
    if tolerance is None:
        assert float((out - sequential).pow(2).mean().sqrt()) < 2 * 10 ** (-40 / 20)
    else:
        assert float((out - sequential).abs().max()) < tolerance
    assert len(calls) * 2 <= 50, f"{len(calls)} sequential rounds for 50 steps"
    assert sum(calls) >= 50 * noise.shape[0]  # the work is still done, in batched calls
