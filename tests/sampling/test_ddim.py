"""DDIM (diffusers' DDIMScheduler): the battery, the diffusers loop, its settings reaching the scheduler."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from ditserve_testing import engine_for, save_tiny_dit

from ditserve.request import GenerationRequest

from .battery import SamplerBattery
from .wrapped import MatchesDiffusers

CLIPPED = {"use_clipped_model_output": True}


class TestDDIM(SamplerBattery, MatchesDiffusers):
    name = "ddim"
    predicts = {"epsilon", "v_prediction", "sample"}
    cases = {
        "ddim": ({"name": "ddim"}, DDIMScheduler, {}, {"eta": 0.0, **CLIPPED}),
        "ddim-eta": ({"name": "ddim", "eta": 0.7}, DDIMScheduler, {}, {"eta": 0.7, **CLIPPED}),
    }


def test_ddim_overrides_reach_the_scheduler(tiny_dit_dir):
    engine = engine_for(tiny_dit_dir, sampler={"name": "ddim", "timestep_spacing": "trailing", "clip_sample": False})
    scheduler = engine.sampler.make_scheduler()
    assert scheduler.config.timestep_spacing == "trailing" and scheduler.config.clip_sample is False
    scheduler.set_timesteps(5)
    assert scheduler.timesteps[0] == 999  # trailing spacing starts at the last training timestep


def test_v_prediction_checkpoint_runs_with_ddim(tmp_path):
    engine = engine_for(save_tiny_dit(tmp_path, prediction_type="v_prediction"), sampler={"name": "ddim", "steps": 3})
    result = engine.generate(GenerationRequest(class_label=1, seed=0))
    assert result.images.shape == (1, 1, 8, 8) and torch.isfinite(result.images).all()
