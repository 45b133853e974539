"""The battery every sampler inherits (as `tests/caching/battery.py` is for caches).

A sampler's test module subclasses `SamplerBattery` as `TestXxx` and sets `name`, `predicts` (the
prediction types it declares) and, when its defaults cannot run on the tiny models, `settings` (or
overrides the `settings` fixture, e.g. to write statistics a calibrated sampler needs). Every check
runs on tiny random DiTs through the real engine (CFG batch [cond; uncond], 2 images): an epsilon
model and a flow-matching one, whichever the sampler declares.
"""

from __future__ import annotations

import re
import threading
from typing import ClassVar

import pytest
import torch
from ditserve_testing import assert_documented_config, engine_for

from ditserve.errors import Cancelled, PlanError
from ditserve.registry import SAMPLERS
from ditserve.request import GenerationRequest

STEPS = 6
GUIDANCE = 3.0
SCHEDULER_CONFIGS = {
    "epsilon": {"_class_name": "DDPMScheduler", "prediction_type": "epsilon"},
    "v_prediction": {"_class_name": "DDPMScheduler", "prediction_type": "v_prediction"},
    "sample": {"_class_name": "DDPMScheduler", "prediction_type": "sample"},
    "flow": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0},
}
"""A scheduler config of each prediction type (the tiny flow model's shift)."""


def request(seed: int = 11, label: int = 3, steps: int = STEPS) -> GenerationRequest:
    return GenerationRequest(class_label=label, seed=seed, num_images=2, guidance_scale=GUIDANCE, steps=steps)


class SamplerBattery:
    pytestmark = pytest.mark.usefixtures("one_thread")  # inherited by every TestXxx

    name: ClassVar[str]
    predicts: ClassVar[set[str]]
    """The prediction types the sampler declares (`Sampler.prediction_types`)."""
    settings_: ClassVar[dict] = {}
    """Fields on top of the defaults that let it run STEPS steps on the tiny models."""

    @pytest.fixture(scope="class")
    def settings(self) -> dict:
        """The plan fields the checks use (a subclass overrides this to write files a sampler needs)."""
        return {"name": self.name, **self.settings_}

    @pytest.fixture(scope="class")
    def engine(self, settings, tiny_dit_dir, tiny_flow_dit_dir):
        path = tiny_dit_dir if "epsilon" in self.predicts else tiny_flow_dit_dir
        return engine_for(path, sampler={**settings, "steps": STEPS})

    # -- config and declarations --------------------------------------------------------------------

    def test_registered_with_a_documented_validated_config(self, settings):
        assert_documented_config(SAMPLERS, settings)

    @pytest.mark.parametrize("kind", list(SCHEDULER_CONFIGS))
    def test_runs_what_it_declares_and_refuses_the_rest_at_load(self, settings, kind):
        cls = SAMPLERS.get(self.name)
        assert cls.prediction_types == self.predicts
        config = SAMPLERS.parse(settings, "plan.sampler")
        scheduler_config = {"num_train_timesteps": 1000, **SCHEDULER_CONFIGS[kind]}
        if kind in self.predicts:
            cls(config, scheduler_config)
        else:
            supported = ", ".join(sorted(self.predicts))
            refusal = f"sampler '{self.name}' cannot run this model: it predicts '{kind}', and '{self.name}' supports "
            with pytest.raises(PlanError, match=re.escape(f"{refusal}{supported}; choose a sampler that supports")):
                cls(config, scheduler_config)

    # -- through the engine ---------------------------------------------------------------------------

    def test_samples_through_the_engine_reporting_every_step(self, engine):
        """Progress counts the sampler's own steps (Heun's 2·steps − 1 scheduler timesteps, PNDM's warm-up), up to
        their total; a parallel sampler's round may finish several."""
        seen = []
        result = engine.generate(request(), on_progress=lambda event: seen.append((event.step, event.total)))
        assert result.images.shape[0] == 2 and torch.isfinite(result.images).all() and result.images.std() > 0
        total = seen[-1][1]
        assert total >= STEPS and seen[-1][0] == total == result.stats.steps and seen == sorted(seen)
        assert result.stats.timestep_evaluations >= STEPS
        assert result.stats.model_evaluations <= result.stats.timestep_evaluations

    def test_a_request_leaves_nothing_behind_for_the_next(self, engine):
        first = engine.generate(request(seed=5)).images
        engine.generate(request(seed=6, label=7, steps=STEPS - 2))
        assert torch.equal(engine.generate(request(seed=5)).images, first)

    def test_cancel_stops_between_steps(self, engine):
        cancel = threading.Event()
        with pytest.raises(Cancelled) as stopped:
            engine.generate(request(), on_progress=lambda event: cancel.set(), cancel=cancel)
        assert 1 <= stopped.value.steps_done < STEPS
        assert torch.isfinite(engine.generate(request()).images).all()  # the engine still serves
