"""Fair comparisons (sampling/fair.py): the wrapped few-step solvers' defaults clip x̂₀ as the checkpoint says and start
at the last trained timestep; a comparison where one solver clips and another does not, or one starts lower, is
refused; and the comparisons the sampling benchmark builds pass that check on both embedded models."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ditserve.errors import PlanError
from ditserve.registry import SAMPLERS
from ditserve.sampling.fair import assert_fair, clips, first_timestep

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parents[2]
MODELS = ROOT / "plugin" / "ditserve" / "models" / "digits"
DIT = json.loads((MODELS / "digits-dit" / "scheduler" / "scheduler_config.json").read_text())
FLOW = json.loads((MODELS / "digits-flow" / "scheduler" / "scheduler_config.json").read_text())
FEW_STEP_SOLVERS = ("dpm-solver++", "unipc", "dpm-solver")


def build(spec: dict, scheduler_config: dict):
    config = SAMPLERS.parse(spec, "plan.sampler")
    return SAMPLERS.get(config.name)(config, scheduler_config)


@pytest.mark.parametrize("name", FEW_STEP_SOLVERS)
def test_few_step_solvers_clip_as_the_checkpoint_and_start_at_pure_noise(name):
    assert clips(build({"name": name}, DIT)) and first_timestep(build({"name": name}, DIT), 5) == 999
    assert not clips(build({"name": name, "clip_sample": False}, DIT))
    if name != "dpm-solver":  # the noise-prediction solver has no flow form
        assert not clips(build({"name": name}, FLOW))


def test_a_comparison_where_one_solver_clips_and_another_does_not_is_refused():
    ddim = build({"name": "ddim", "timestep_spacing": "trailing"}, DIT)
    assert_fair({"ddim": ddim, "dpm-solver++": build({"name": "dpm-solver++"}, DIT)}, 5)
    unclipped = build({"name": "dpm-solver++", "clip_sample": False}, DIT)  # what the wrapper did before
    with pytest.raises(PlanError, match="dpm-solver\\+\\+ do not; clip in all of them"):
        assert_fair({"ddim": ddim, "dpm-solver++": unclipped}, 5)
    with pytest.raises(PlanError, match="euler do not"):  # diffusers' Euler cannot clip
        assert_fair({"ddim": ddim, "euler": build({"name": "euler"}, DIT)}, 5)


def test_a_solver_starting_below_the_last_timestep_is_refused():
    own = build({"name": "paradigms", "window": 1}, DIT)
    leading = build({"name": "ddim"}, DIT)  # the checkpoint's "leading" spacing: 5 steps start at t = 800
    with pytest.raises(PlanError, match="ddim starts 5 steps at t = 800"):
        assert_fair({"paradigms": own, "ddim": leading}, 5)


def test_the_sampling_benchmark_builds_fair_comparisons(digits_statistics):
    spec = importlib.util.spec_from_file_location("sampling_benchmark", ROOT / "benchmarks" / "sampling.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    names = [name for name, _ in SAMPLERS if name != "none"]
    calibrated = {"dpm-solver-v3": {"statistics": digits_statistics}, "dc-solver": {"ratios": {1: [1.0]}}}
    for scheduler_config, expected in ((DIT, {"ddim", "dpm-solver++", "dpm-solver-v3", "unipc", "heun"}),
                                       (FLOW, {"flow-euler", "dpm-solver++", "unipc"})):  # fmt: skip
        for nfe in (5, 10):
            compared = benchmark.comparison(scheduler_config, nfe, calibrated, names)  # checks fairness itself
            assert expected <= set(compared), set(compared)
            assert_fair({label: build(s, scheduler_config) for label, s in compared.items()}, nfe)
