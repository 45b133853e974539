"""The own solvers through the Engine: on the trained digits model at few steps, and their calibration
commands (`ditserve calibrate --sampler ...`) end to end on a tiny checkpoint."""

from __future__ import annotations

import pytest
import torch
import yaml
from ditserve_testing import save_tiny_dit
from safetensors.torch import save_file

from ditserve.cli import main
from ditserve.config import load_config
from ditserve.engine import Engine
from ditserve.errors import PlanError
from ditserve.quality import load_classifier
from ditserve.request import GenerationRequest
from ditserve.sampling.dpm_solver_v3 import Statistics
from ditserve.sampling.ode import NoiseSchedule


@pytest.fixture(scope="module")
def digits():
    return Engine.from_config("builtin:digits-dit")


@pytest.fixture(scope="module")
def plus_plus_statistics(digits, tmp_path_factory):
    """v3 statistics with l = 1, s = b = 0 (DPM-Solver++'s update): v3's machinery without a calibration run."""
    stats = Statistics.degenerate(NoiseSchedule(digits.model.scheduler_config), (1, 16, 16))
    path = tmp_path_factory.mktemp("v3") / "ems.safetensors"
    save_file({"lambdas": stats.lambdas.float(), "l": stats.l.float(), "s": stats.s.float(), "b": stats.b.float()},
              str(path))  # fmt: skip
    return str(path)


def sampler_spec(name: str, statistics: str) -> dict:
    v3 = {"name": "dpm-solver-v3", "statistics": statistics}
    return {
        "dpm-solver-v3": v3,
        "dc-solver": {"name": name, "ratios": {6: [1.0, 1.0, 1.0, 1.05, 0.95, 1.0]}},
        "paradigms": {"name": name, "window": 12, "tolerance": 0.02},
        "parataa": {"name": name, "tolerance": 0.02},
        "sampler-scheduler": {"name": name, "stages": [{"sampler": {"name": "paradigms", "window": 1}, "steps": 2},
                                                       {"sampler": v3}]},
    }[name]  # fmt: skip


@pytest.mark.parametrize("name", ["dpm-solver-v3", "dc-solver", "paradigms", "parataa", "sampler-scheduler"])
def test_own_samplers_make_digits_through_the_engine(digits, plus_plus_statistics, name):
    parallel = name in ("paradigms", "parataa")
    steps, classes = (12, 5) if parallel else (6, 10)  # a parallel round evaluates the whole window: fewer images
    requests = [GenerationRequest(class_label=c, seed=c, steps=steps, sampler=sampler_spec(name, plus_plus_statistics))
                for c in range(classes)]  # fmt: skip
    seen = []
    results = digits.generate_batch(requests, on_progress=lambda event: seen.append(event.step))
    images = torch.cat([r.images for r in results])
    with torch.no_grad():
        predicted = load_classifier()(images * 2 - 1).argmax(dim=1)
    assert float((predicted == torch.arange(classes)).float().mean()) >= 0.7
    stats = results[0].stats
    assert stats.timestep_evaluations >= steps and seen[-1] == steps
    if parallel:
        assert stats.model_evaluations < steps  # several steps per batched call
    else:
        assert stats.model_evaluations == stats.timestep_evaluations == 6


def test_calibrate_commands_write_a_plan_that_loads(tmp_path):
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

    assert main(["calibrate", "--sampler", "dpm-solver-v3", "--config", str(config), "--samples", "2"]) == 0
    plan = load_config(config).plan.sampler
    assert plan.name == "dpm-solver-v3" and (tmp_path / "tiny-dpm-solver-v3.safetensors").is_file()
    stats = Statistics.load(plan.statistics)
    assert stats.l.shape == (251, 1, 8, 8) and torch.isfinite(stats.s).all() and torch.isfinite(stats.b).all()
    result = Engine.from_config(config).generate(GenerationRequest(class_label=1, seed=0, steps=5))
    assert torch.isfinite(result.images).all()

    yaml_data = yaml.safe_load(config.read_text())
    yaml_data["plan"]["sampler"] = {"name": "paradigms", "window": 1, "steps": 12}
    config.write_text(yaml.safe_dump(yaml_data))
    assert main(["calibrate", "--sampler", "paradigms", "--auto-steps", "25", "--config", str(config),
                 "--samples", "2"]) == 0  # fmt: skip
    steps = load_config(config).plan.sampler.steps
    assert 1 <= steps < 12
    assert main(["calibrate", "--sampler", "paradigms", "--config", str(config)]) == 2  # needs no calibration
