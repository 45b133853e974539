"""The wrapped diffusers samplers (PNDM, DPM-Solver, DPM-Solver++, UniPC, Euler, Heun, flow-matching Euler):
each gives bit for bit what the diffusers scheduler it wraps gives in a plain pipeline loop, on a diffusion
(epsilon) and a flow-matching model, and each refuses at load a model whose prediction type it cannot run.

The flow model is the tiny random DiT with a `FlowMatchEulerDiscreteScheduler` config: the DiT adapter
feeds it the scheduler's timestep (1000·σ) like any flow transformer.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from ditserve_testing import engine_for, save_tiny_dit

from ditserve.errors import PlanError
from ditserve.registry import SAMPLERS
from ditserve.request import GenerationRequest

STEPS = 6
GUIDANCE = 3.0
FLOW_SHIFT = 3.0
WRAPPED = ("pndm", "dpm-solver", "dpm-solver++", "unipc", "euler", "heun", "flow-euler")
DECLARED = {
    "pndm": {"epsilon", "v_prediction"},
    "dpm-solver": {"epsilon", "v_prediction", "sample"},
    "dpm-solver++": {"epsilon", "v_prediction", "sample", "flow"},
    "unipc": {"epsilon", "v_prediction", "sample", "flow"},
    "euler": {"epsilon", "v_prediction", "sample"},
    "heun": {"epsilon", "v_prediction", "sample"},
    "flow-euler": {"flow"},
}
SCHEDULER_CONFIGS = {
    "epsilon": {"_class_name": "DDPMScheduler", "prediction_type": "epsilon"},
    "v_prediction": {"_class_name": "DDPMScheduler", "prediction_type": "v_prediction"},
    "sample": {"_class_name": "DDPMScheduler", "prediction_type": "sample"},
    "flow": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": FLOW_SHIFT},
}
FLOW = {"use_flow_sigmas": True, "flow_shift": FLOW_SHIFT, "prediction_type": "flow_prediction"}
"""How diffusers' own Wan pipelines set up DPM-Solver++ / UniPC for a flow-matching model."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_flow_dir(tmp_path_factory):
    path = save_tiny_dit(tmp_path_factory.mktemp("tiny-flow-dit"))
    FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT).save_pretrained(path / "scheduler")
    return path


def pipeline_loop(engine, scheduler, label: int, seeds: list[int]) -> torch.Tensor:
    """A diffusers pipeline's denoising loop written out against the raw transformer: CFG on a doubled batch,
    `scale_model_input` and `init_noise_sigma` where the scheduler has them (flow-matching ones do not)."""
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
            x = scheduler.step(output, t, x, **({"generator": generators} if stochastic else {})).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


DIFFUSION_CASES = {
    "pndm": ({"name": "pndm"}, PNDMScheduler, {"skip_prk_steps": True}),
    "pndm-prk": ({"name": "pndm", "skip_prk_steps": False}, PNDMScheduler, {"skip_prk_steps": False}),
    **{
        f"dpm-solver-{order}{'m' if multistep else 's'}": (
            {"name": "dpm-solver", "order": order, "multistep": multistep},
            DPMSolverMultistepScheduler if multistep else DPMSolverSinglestepScheduler,
            {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": order},
        )
        for order in (1, 2, 3)
        for multistep in (True, False)
    },
    "dpm-solver++-2m": ({"name": "dpm-solver++"}, DPMSolverMultistepScheduler, {"solver_order": 2}),
    "dpm-solver++-3m": ({"name": "dpm-solver++", "variant": "3M"}, DPMSolverMultistepScheduler, {"solver_order": 3}),
    "dpm-solver++-sde": (
        {"name": "dpm-solver++", "variant": "SDE"},
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    **{
        f"unipc-{order}": ({"name": "unipc", "order": order}, UniPCMultistepScheduler, {"solver_order": order})
        for order in (1, 2, 3)
    },
    "euler": ({"name": "euler"}, EulerDiscreteScheduler, {}),
    "euler-karras": ({"name": "euler", "karras_sigmas": True}, EulerDiscreteScheduler, {"use_karras_sigmas": True}),
    "heun": ({"name": "heun"}, HeunDiscreteScheduler, {}),
}
FLOW_CASES = {
    "flow-euler": ({"name": "flow-euler"}, FlowMatchEulerDiscreteScheduler, {}),
    "flow-euler-shift": ({"name": "flow-euler", "shift": 1.5}, FlowMatchEulerDiscreteScheduler, {"shift": 1.5}),
    "dpm-solver++-2m": ({"name": "dpm-solver++"}, DPMSolverMultistepScheduler, FLOW),
    "dpm-solver++-3m": (
        {"name": "dpm-solver++", "variant": "3M"},
        DPMSolverMultistepScheduler,
        {**FLOW, "solver_order": 3},
    ),
    "dpm-solver++-sde": (
        {"name": "dpm-solver++", "variant": "SDE"},
        DPMSolverMultistepScheduler,
        {**FLOW, "algorithm_type": "sde-dpmsolver++"},
    ),
    "unipc": ({"name": "unipc"}, UniPCMultistepScheduler, FLOW),
    "unipc-3": ({"name": "unipc", "order": 3}, UniPCMultistepScheduler, {**FLOW, "solver_order": 3}),
}


def assert_matches_the_pipeline_loop(path, plan, scheduler_class, settings):
    engine = engine_for(path, sampler={**plan, "steps": STEPS})
    result = engine.generate(GenerationRequest(class_label=3, seed=11, num_images=2, guidance_scale=GUIDANCE))
    expected = pipeline_loop(
        engine, scheduler_class.from_config(engine.model.scheduler_config, **settings), 3, [11, 12]
    )
    assert torch.isfinite(expected).all() and expected.std() > 0
    assert torch.equal(result.images, expected)


@pytest.mark.parametrize("case", list(DIFFUSION_CASES))
def test_wrapped_sampler_matches_diffusers_on_an_epsilon_model(tiny_dit_dir, case):
    assert_matches_the_pipeline_loop(tiny_dit_dir, *DIFFUSION_CASES[case])


@pytest.mark.parametrize("case", list(FLOW_CASES))
def test_wrapped_sampler_matches_diffusers_on_a_flow_model(tiny_flow_dir, case):
    assert_matches_the_pipeline_loop(tiny_flow_dir, *FLOW_CASES[case])


def test_the_comparison_sees_a_wrong_setting(tiny_dit_dir):
    """The exact comparison fails when the wrapper and the reference differ in one setting (order 2 vs 3)."""
    with pytest.raises(AssertionError):
        assert_matches_the_pipeline_loop(
            tiny_dit_dir, {"name": "unipc", "order": 2}, UniPCMultistepScheduler, {"solver_order": 3}
        )


@pytest.mark.parametrize("name", WRAPPED)
@pytest.mark.parametrize("kind", list(SCHEDULER_CONFIGS))
def test_each_sampler_runs_what_it_declares_and_refuses_the_rest(name, kind):
    cls = SAMPLERS.get(name)
    assert cls.prediction_types == DECLARED[name]
    config = {"num_train_timesteps": 1000, **SCHEDULER_CONFIGS[kind]}
    if kind in DECLARED[name]:
        cls(cls.Config(), config).make_scheduler().set_timesteps(4)  # diffusers accepts the settings
    else:
        with pytest.raises(PlanError, match=f"sampler '{name}' cannot run this model: it predicts '{kind}'"):
            cls(cls.Config(), config)


def test_a_mismatched_sampler_fails_at_engine_load(tiny_flow_dir, tiny_dit_dir):
    with pytest.raises(PlanError, match="predicts 'flow'.*choose a sampler that supports 'flow'"):
        engine_for(tiny_flow_dir, sampler={"name": "pndm"})
    with pytest.raises(PlanError, match="predicts 'epsilon', and 'flow-euler' supports flow"):
        engine_for(tiny_dit_dir, sampler={"name": "flow-euler"})
