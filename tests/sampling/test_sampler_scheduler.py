"""Sampler Scheduler: the battery; stages over their ranges on the analytic Gaussian case; the digits model."""

from __future__ import annotations

import pytest
import torch
from gaussian_data import VP_CONFIG, GaussianData

from ditserve.errors import PlanError
from ditserve.sampling.ode import Progress
from ditserve.sampling.sampler_scheduler import SamplerScheduler, SamplerSchedulerConfig

from .battery import SamplerBattery
from .own import MakesDigits

pytestmark = pytest.mark.usefixtures("one_thread")


class TestSamplerScheduler(SamplerBattery, MakesDigits):
    name = "sampler-scheduler"
    predicts = {"epsilon", "v_prediction", "flow"}
    settings_ = {
        "stages": [
            {"sampler": {"name": "paradigms", "window": 1}, "steps": 2},
            {"sampler": {"name": "dc-solver", "ratios": {4: [1.0] * 4}}},
        ]
    }

    def digits_plan(self, statistics: str) -> dict:
        v3 = {"name": "dpm-solver-v3", "statistics": statistics}
        return {"name": self.name, "stages": [{"sampler": {"name": "paradigms", "window": 1}, "steps": 2},
                                              {"sampler": v3}]}  # fmt: skip


def test_sampler_scheduler_runs_its_stages_over_their_ranges():
    data = GaussianData(VP_CONFIG)
    noise = data.noise(2)
    first = {"name": "paradigms", "window": 1}
    second = {"name": "dc-solver", "ratios": {10: [1.0] * 10}}
    config = SamplerSchedulerConfig(steps=10, stages=[{"sampler": first, "until": 0.3}, {"sampler": second}])
    scheduler = SamplerScheduler(config, VP_CONFIG)
    assert scheduler.boundaries(10) == [3, 10]
    taus = scheduler.taus(10, None)
    denoise = data.denoise
    by_hand = scheduler.stages[0].integrate(denoise, noise, taus[:4], Progress(lambda *a: None, 0, 10))
    by_hand = scheduler.stages[1].integrate(denoise, by_hand, taus[3:], Progress(lambda *a: None, 3, 10))
    seen = []
    out = scheduler.sample(denoise, noise, 10, [], lambda done, total, x: seen.append((done, total)))
    assert torch.equal(out, by_hand)
    assert [done for done, _ in seen] == list(range(1, 11))
    with pytest.raises(PlanError, match="cannot run a range of steps"):
        SamplerScheduler(SamplerSchedulerConfig(stages=[{"sampler": {"name": "ddim"}}]), VP_CONFIG)


def test_an_sde_stage_draws_its_noise_from_the_seeds():
    """The preset (SDE-DPM-Solver++ over the first half, then UniPC): seeded, so the same seeds give the same samples
    and other seeds others; and not the all-ODE schedule (the same ODE stage from the start)."""
    data = GaussianData(VP_CONFIG)
    noise = data.noise(2)

    def sample(config, seeds):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return SamplerScheduler(config, VP_CONFIG).sample(data.denoise, noise, 10, generators, lambda *a: None)

    preset = SamplerSchedulerConfig(preset="sde-then-ode")
    assert [type(stage).__name__ for stage in SamplerScheduler(preset, VP_CONFIG).stages] == ["SDEDPMSolverPP",
                                                                                               "DCSolver"]  # fmt: skip
    mixed = sample(preset, [1, 2])
    assert torch.equal(mixed, sample(preset, [1, 2]))
    assert not torch.allclose(mixed, sample(preset, [3, 4]))
    ode = SamplerSchedulerConfig(stages=[{"sampler": {"name": "dc-solver", "ratios": {1: [1.0]}}}])
    assert (mixed - sample(ode, [1, 2])).abs().max() > 0.05
    with pytest.raises(ValueError, match="not both"):
        SamplerSchedulerConfig(preset="sde-then-ode", stages=[{"sampler": {"name": "paradigms"}}])
