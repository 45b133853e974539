"""Wrapped samplers give exactly what diffusers' own scheduler loop gives, and refuse models they can't run."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from ditserve_testing import engine_for, save_tiny_dit

from ditserve.errors import PlanError
from ditserve.request import GenerationRequest


def diffusers_loop(engine, scheduler, steps: int, label: int, seeds: list[int], guidance: float, step_kwargs: dict):
    """The sampling loop of diffusers' DiTPipeline, written out against the raw transformer."""
    model = engine.model
    shape = engine.adapter.latent_shape(model, *engine.adapter.default_size(model))
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(shape, generator=g) for g in generators])
    labels = torch.tensor([label] * len(seeds))
    null = torch.full_like(labels, model.transformer.config.num_embeds_ada_norm)
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    with torch.inference_mode():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            out = model.transformer(x_in, timestep=t.expand(x_in.shape[0]), class_labels=torch.cat([labels, null]))
            cond, uncond = out.sample[:, : x.shape[1]].chunk(2)
            eps = uncond + guidance * (cond - uncond)
            x = scheduler.step(eps, t, x, generator=generators, **step_kwargs).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize(
    ("plan", "scheduler_class", "step_kwargs"),
    [
        ({"name": "ddim", "steps": 7}, DDIMScheduler, {"eta": 0.0, "use_clipped_model_output": True}),
        ({"name": "ddim", "steps": 7, "eta": 0.7}, DDIMScheduler, {"eta": 0.7, "use_clipped_model_output": True}),
        ({"name": "ddpm", "steps": 7}, DDPMScheduler, {}),
        ({"name": "none", "steps": 7}, DDPMScheduler, {}),
    ],
    ids=["ddim", "ddim-eta", "ddpm", "none"],
)
def test_wrapped_sampler_matches_the_diffusers_loop_exactly(tiny_dit_dir, plan, scheduler_class, step_kwargs):
    engine = engine_for(tiny_dit_dir, sampler=plan)
    result = engine.generate(GenerationRequest(class_label=3, seed=11, num_images=2, guidance_scale=3.0))
    scheduler = scheduler_class.from_config(engine.model.scheduler_config)
    expected = diffusers_loop(engine, scheduler, 7, 3, [11, 12], 3.0, step_kwargs)
    assert torch.equal(result.images, expected)


def test_ddim_overrides_reach_the_scheduler(tiny_dit_dir):
    engine = engine_for(tiny_dit_dir, sampler={"name": "ddim", "timestep_spacing": "trailing", "clip_sample": False})
    scheduler = engine.sampler.make_scheduler()
    assert scheduler.config.timestep_spacing == "trailing" and scheduler.config.clip_sample is False
    scheduler.set_timesteps(5)
    assert scheduler.timesteps[0] == 999  # trailing spacing starts at the last training timestep


def test_sampler_refuses_a_prediction_type_it_cannot_integrate(tmp_path):
    from ditserve.registry import SAMPLERS
    from ditserve.sampling.base import SamplerConfig

    flow_config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}
    with pytest.raises(PlanError, match="predicts 'flow'.*supports epsilon, sample, v_prediction"):
        SAMPLERS.get("ddim")(SAMPLERS.get("ddim").Config(), flow_config)
    SAMPLERS.get("none")(SamplerConfig(name="none"), flow_config)  # the checkpoint's own scheduler always fits


def test_v_prediction_checkpoint_runs_with_ddim(tmp_path):
    engine = engine_for(save_tiny_dit(tmp_path, prediction_type="v_prediction"), sampler={"name": "ddim", "steps": 3})
    result = engine.generate(GenerationRequest(class_label=1, seed=0))
    assert result.images.shape == (1, 1, 8, 8) and torch.isfinite(result.images).all()
