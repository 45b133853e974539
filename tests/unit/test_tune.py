"""Tuned plans (`ditserve tune`, ditserve/tune.py and tuned.py) on the embedded digits-dit: what the tuner writes
meets its target on held-back seeds when the engine serves it, the engine picks a tuned plan by the request's
steps and guidance (and leaves a request's own sampler or cache alone), and a bad tuned-plans file is refused at
load with a sentence that says what to change."""

from __future__ import annotations

import pytest
import torch
import yaml

from ditserve.calibrate import calibration_requests
from ditserve.cli import main
from ditserve.config import load_config
from ditserve.engine import Engine
from ditserve.errors import ConfigError
from ditserve.quality import mean_finite, psnr
from ditserve.tune import HELD_BACK_IMAGES, HELD_BACK_SEED, tune

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = load_config("builtin:digits-dit")
FORA_AT_10 = {"sampler": {"name": "ddim", "steps": 10}, "cache": {"name": "fora", "spacing": 0.2}}


def config_with(tmp_path, tuned: dict | None, **plan) -> str:
    """A digits-dit config in `tmp_path` whose plan names `tuned` (written beside it) as its tuned plans."""
    data = BASE.model_dump(mode="json", exclude_none=True)
    data["plan"] |= plan
    if tuned is not None:
        (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(tuned))
        data["plan"]["tuned"] = "tuned.yaml"
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def tuned_file(*plans: dict, model: str = "digits-dit") -> dict:
    return {"model": model, "target_psnr": 30.0, "plans": list(plans)}


def held_back(served: Engine, plain: Engine, steps: int) -> tuple[float, float]:
    """Mean PSNR of `served` (its tuned plans) against `plain` on the tuner's held-back seeds, requests as a client
    sends them (steps only), and the share of `plain`'s block evaluations `served` took."""
    requests = calibration_requests(plain, HELD_BACK_IMAGES, steps, HELD_BACK_SEED)
    results = [e.generate_batch(requests) for e in (served, plain)]
    images = [torch.cat([r.images for r in rs]) * 2 - 1 for rs in results]
    work = results[0][0].stats.block_evaluations / results[1][0].stats.block_evaluations
    return mean_finite(psnr(*images)), work


def test_the_tuners_plan_meets_its_target_on_held_back_seeds_as_served(tmp_path):
    tuned = tune(BASE, target_psnr=32.0, steps=[20], budget_minutes=0.6, pairs=1)  # ~20 s of search on 2 quiet cores
    (plan,) = tuned.plans
    assert plan.measured["psnr"] >= 32.0 and plan.measured["count_ratio"] < 1.0
    assert tuned.search["candidates"] >= 1 and tuned.search["seconds"] > 0  # the cost is reported
    (tmp_path / "tuned.yaml").write_text(tuned.to_yaml())
    data = BASE.model_dump(mode="json", exclude_none=True)
    data["plan"]["tuned"] = "tuned.yaml"
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(data))
    served = Engine(load_config(tmp_path / "model.yaml"))
    db, work = held_back(served, Engine(BASE), 20)
    assert db >= 32.0 and work < 1.0  # the tuned plan ran, not the plan


@pytest.mark.slow
def test_the_command_tunes_every_step_count_and_each_plan_keeps_the_target(tmp_path):
    out = tmp_path / "tuned.yaml"
    argv = ["tune", "--config", "builtin:digits-dit", "--target-psnr", "33", "--steps", "20,28,50"]
    assert main([*argv, "--budget-minutes", "8", "--out", str(out)]) == 0
    data = BASE.model_dump(mode="json", exclude_none=True)
    data["plan"]["tuned"] = str(out)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(data))
    served, plain = Engine(load_config(tmp_path / "model.yaml")), Engine(BASE)
    assert sorted(p.steps for p in served.tuned.plans) == [20, 28, 50]
    for plan in served.tuned.plans:
        db, work = held_back(served, plain, plan.steps)
        assert db >= 33.0 and work < 1.0


def test_the_engine_picks_the_tuned_plan_by_steps_and_guidance(tmp_path):
    tuned = tuned_file({"steps": 20, "guidance": [3.0, 5.0], **FORA_AT_10})
    engine = Engine(load_config(config_with(tmp_path, tuned)))
    job = engine.validate(calibration_requests(engine, 1, 20)[0])
    assert job.steps == 10 and job.sampler.name == "ddim" and job.cache.name == "fora"
    result = engine.generate(calibration_requests(engine, 1, 20)[0])
    assert result.stats.steps == 10 and result.stats.block_evaluations < result.stats.block_evaluations_full
    other_steps = engine.validate(calibration_requests(engine, 1, 28)[0])
    assert other_steps.steps == 28 and other_steps.cache is None  # no plan for 28 steps: the model's plan
    request = calibration_requests(engine, 1, 20)[0]
    outside = engine.validate(request.model_copy(update={"guidance_scale": 6.0}))
    assert outside.steps == 20 and outside.cache is None  # outside the band the plan was measured for
    own_cache = engine.validate(request.model_copy(update={"cache": {"name": "fora"}}))
    assert own_cache.steps == 20 and own_cache.sampler.config.steps == 50 and own_cache.cache.spacing != 0.2
    own_sampler = engine.validate(request.model_copy(update={"sampler": {"name": "dpm-solver++"}}))
    assert own_sampler.steps == 20 and own_sampler.sampler.name == "dpm-solver++" and own_sampler.cache is None


@pytest.mark.parametrize(
    ("tuned", "words"),
    [
        (None, "does not exist; write it with `ditserve tune --out`"),
        (
            tuned_file({"steps": 20, "guidance": [4, 4], **FORA_AT_10}, model="digits-flow"),
            "tuned on model 'digits-flow'",
        ),
        (
            tuned_file(
                {"steps": 20, "guidance": [3, 5], **FORA_AT_10}, {"steps": 20, "guidance": [4, 6], **FORA_AT_10}
            ),
            "two plans serve 20 steps at overlapping guidance bands",
        ),
        (tuned_file({"steps": 20, "guidance": [4, 4], **FORA_AT_10, "cache": {"name": "fora", "spacin": 1}}), "spacin"),
        (tuned_file({"steps": 20, "guidance": [5, 4], **FORA_AT_10}), "guidance: Value error, must be [low, high]"),
        (tuned_file({"steps": 500, "guidance": [4, 4], **FORA_AT_10}), "exceeds limits.max_steps"),
        ({"model": "digits-dit", "plans": []}, "target_psnr"),
    ],
)
def test_a_bad_tuned_file_is_refused_at_load_naming_what_to_change(tmp_path, tuned, words):
    path = config_with(tmp_path, tuned)
    if tuned is None:  # the config names a file that is not there
        config = tmp_path / "model.yaml"
        data = yaml.safe_load(config.read_text())
        data["plan"]["tuned"] = "missing.yaml"
        config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert words in str(refused.value)
