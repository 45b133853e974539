"""DC-Solver: the battery; on the analytic Gaussian case; on the digits model; its calibration command end to end
on a tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from ditserve_testing import save_tiny_dit
from gaussian_data import VP_CONFIG, GaussianData, error

from ditserve.cli import main
from ditserve.config import load_config
from ditserve.engine import Engine
from ditserve.errors import PlanError
from ditserve.request import GenerationRequest
from ditserve.sampling.dc_solver import DCSolver, DCSolverConfig, search_ratios

from .battery import STEPS, SamplerBattery
from .own import CONFIGS, MakesDigits

pytestmark = pytest.mark.usefixtures("one_thread")


class TestDCSolver(SamplerBattery, MakesDigits):
    name = "dc-solver"
    predicts = {"epsilon", "v_prediction", "flow"}
    settings_ = {"ratios": {STEPS: [1.0] * STEPS}}

    def digits_plan(self, statistics: str) -> dict:
        return {"name": self.name, "ratios": {6: [1.0, 1.0, 1.0, 1.05, 0.95, 1.0]}}


def slope(steps: list[int], errors: list[float]) -> float:
    """Fitted order: minus the slope of log error against log steps."""
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.parametrize(("order", "stated"), [(1, 2), (2, 3)])
@CONFIGS
def test_dc_solver_converges_at_its_stated_order(scheduler_config, order, stated):
    """With every ratio 1 it is UniPC: predictor order p plus the corrector's one."""
    data = GaussianData(scheduler_config)
    config = DCSolverConfig(order=order, ratios={20: [1.0] * 20}, spacing="logsnr", lower_order_final=False)
    solver = DCSolver(config, scheduler_config)
    steps = [20, 40, 80, 160]
    errors = [error(solver, data, data.noise(2), n) for n in steps]
    assert slope(steps, errors) > stated - 0.3, errors


@CONFIGS
def test_dc_solver_searched_ratios_bring_few_steps_closer_to_the_true_solution(scheduler_config):
    data = GaussianData(scheduler_config)
    unit = DCSolver(DCSolverConfig(ratios={5: [1.0] * 5}), scheduler_config)
    ns = data.schedule
    data_fn = lambda x, tau: ns.data(data.denoise(x, torch.tensor(tau)), x, tau)  # noqa: E731
    ratios = search_ratios(unit, data_fn, data.noise(8, seed=7), unit.taus(5, None))
    searched = DCSolver(DCSolverConfig(ratios={5: ratios}), scheduler_config)
    noise = data.noise(8, seed=11)  # other samples than the search saw
    assert ratios != [1.0] * 5
    assert error(searched, data, noise, 5) < 0.8 * error(unit, data, noise, 5)


def test_dc_solver_resamples_the_nearest_calibrated_ratios():
    solver = DCSolver(DCSolverConfig(ratios={5: [1.0, 1.0, 1.2, 0.8, 1.0], 20: [1.0] * 20}), VP_CONFIG)
    assert solver.ratios_for(5) == [1.0, 1.0, 1.2, 0.8, 1.0]
    assert solver.ratios_for(16) == [1.0] * 16
    assert len(solver.ratios_for(7)) == 7
    with pytest.raises(PlanError, match="ditserve calibrate --sampler dc-solver"):
        DCSolver(DCSolverConfig(), VP_CONFIG)


def test_calibrate_command_writes_ratios_that_load(tmp_path):
    checkpoint = save_tiny_dit(tmp_path / "tiny")
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "tiny", "path": str(checkpoint), "family": "dit", "guidance_scale": 2.0},
        "plan": {"sampler": {"name": "dc-solver", "calibrate_steps": [4]}},
    }))  # fmt: skip
    with pytest.raises(PlanError, match="ditserve calibrate --sampler dc-solver"):
        Engine.from_config(config)
    assert main(["calibrate", "--sampler", "dc-solver", "--config", str(config), "--samples", "2"]) == 0
    plan = load_config(config).plan.sampler
    assert sorted(plan.ratios) == [4] and len(plan.ratios[4]) == 4
    Engine.from_config(config).generate(GenerationRequest(class_label=1, seed=0, steps=4))
