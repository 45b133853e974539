"""The check every wrapped diffusers sampler adds to the battery: bit for bit what the diffusers scheduler
it wraps gives in a plain pipeline loop (`pipeline_loop`), on an epsilon and a flow-matching model."""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch
from ditserve_testing import engine_for

from ditserve.request import GenerationRequest

from .battery import GUIDANCE, STEPS

FLOW = {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"}
"""How diffusers' own Wan pipelines set up DPM-Solver++ / UniPC for a flow-matching model."""
FEW_STEP = {"timestep_spacing": "trailing"}
"""The wrapped few-step solvers' default spacing (sampling/fair.py)."""
LEADING = {"timestep_spacing": "leading"}
"""Where the σ-space solvers (Euler, Heun) run the plain diffusers loop on the tiny DiT: its cosine schedule's last
timestep has σ ≈ 20291, and from there their first step is DDIM's (sampling/sigma_space.py, test_sigma_space.py)."""
THRESHOLDED = {**FEW_STEP, "thresholding": True, "sample_max_value": 1.0}
"""Their defaults on the tiny DiT, whose DDPM config clips x̂₀: diffusers' thresholding at maximum 1."""


def pipeline_loop(engine, scheduler, label: int, seeds: list[int], step_kwargs: dict | None = None) -> torch.Tensor:
    """A diffusers pipeline's denoising loop (DiTPipeline's) written out against the raw transformer: CFG on a
    doubled batch, `scale_model_input` and `init_noise_sigma` where the scheduler has them (flow-matching ones
    do not), the per-image generators where `step` takes them."""
    model = engine.model
    shape = engine.adapter.latent_shape(model, *engine.adapter.default_size(model))
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(shape, generator=g) for g in generators])
    labels = torch.tensor([label] * len(seeds))
    null = torch.full_like(labels, model.transformer.config.num_embeds_ada_norm)
    scheduler.set_timesteps(STEPS)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)
    stochastic = "generator" in inspect.signature(scheduler.step).parameters
    with torch.inference_mode():
        for t in scheduler.timesteps:
            x_in = torch.cat([x, x])
            if hasattr(scheduler, "scale_model_input"):
                x_in = scheduler.scale_model_input(x_in, t)
            out = model.transformer(x_in, timestep=t.expand(x_in.shape[0]), class_labels=torch.cat([labels, null]))
            cond, uncond = out.sample[:, : x.shape[1]].chunk(2)
            output = uncond + GUIDANCE * (cond - uncond)
            kwargs = {"generator": generators} if stochastic else {}
            x = scheduler.step(output, t, x, **kwargs, **(step_kwargs or {})).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


def assert_matches_the_pipeline_loop(path, plan: dict, scheduler_class, settings: dict, step_kwargs=None) -> None:
    engine = engine_for(path, sampler={**plan, "steps": STEPS})
    result = engine.generate(GenerationRequest(class_label=3, seed=11, num_images=2, guidance_scale=GUIDANCE))
    scheduler = scheduler_class.from_config(engine.model.scheduler_config, **settings)
    expected = pipeline_loop(engine, scheduler, 3, [11, 12], step_kwargs)
    assert torch.isfinite(expected).all() and expected.std() > 0
    assert torch.equal(result.images, expected)


class MatchesDiffusers:
    """Mixin for a wrapped sampler's `TestXxx`: `cases` on the epsilon model, `flow_cases` on the flow model,
    each `id: (plan, diffusers scheduler class, its settings[, step kwargs])`."""

    cases: ClassVar[dict[str, tuple]] = {}
    flow_cases: ClassVar[dict[str, tuple]] = {}

    def test_matches_the_diffusers_pipeline_loop_exactly(self, wrapped_case, tiny_dit_dir, tiny_flow_dit_dir):
        """`wrapped_case` is each of `cases` and `flow_cases` in turn (conftest.py parametrizes it)."""
        kind, case = wrapped_case
        assert_matches_the_pipeline_loop(tiny_flow_dit_dir if kind == "flow" else tiny_dit_dir, *case)
