"""`plan.compile`: compiled engines give the eager engine's images and counts with the registries' strategies,
or refuse the plan at load with the reason. CPU inductor compiles take seconds each: the sweep over every
strategy is marked slow; CI runs one compiled engine with a cache, a quantizer and a multistep sampler."""

from __future__ import annotations

import pytest
from ditserve_testing import engine_for, save_tiny_dit

from ditserve.errors import PlanError, RequestError
from ditserve.request import GenerationRequest

PLAN = {"cache": {"name": "fora", "interval": 2}, "quant": {"name": "int8"}, "sampler": {"name": "dpm-solver++"}}
REQUEST = GenerationRequest(class_label=3, steps=5, seed=4, num_images=2)


def assert_same_run(eager, compiled, request=REQUEST) -> None:
    a, b = eager.generate(request), compiled.generate(request)
    assert (a.images - b.images).abs().max().item() <= 1e-4
    assert (a.stats.block_evaluations, a.stats.attention_evaluations) == (
        b.stats.block_evaluations,
        b.stats.attention_evaluations,
    )
    assert a.stats.block_evaluations < a.stats.block_evaluations_full or eager.config.plan.cache.name == "none"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    path = save_tiny_dit(tmp_path_factory.mktemp("compile"))
    return engine_for(path, **PLAN), engine_for(path, **PLAN, compile="full")


def test_full_with_a_cache_compiles_the_blocks_and_runs_as_eager(engines):
    eager, compiled = engines
    assert compiled.compiler.mode == "regional"  # a cache decides per block: the blocks are the regions
    assert compiled.describe()["runs"]["compile"] == "regional"
    assert_same_run(eager, compiled)
    assert_same_run(eager, compiled, REQUEST.model_copy(update={"num_images": 1, "seed": 9}))  # another shape


def test_a_request_cache_that_hooks_inside_the_compiled_blocks_is_refused(engines):
    _, compiled = engines
    with pytest.raises(RequestError, match="compile: regional compiles whole blocks, but cache 'pab' hooks"):
        compiled.generate(REQUEST.model_copy(update={"cache": {"name": "pab"}}))
    assert_same_run(engines[0], compiled)  # the plan's own cache is back


def test_a_plan_whose_cache_hooks_inside_the_compiled_blocks_is_refused_at_load(tmp_path):
    with pytest.raises(PlanError, match="but cache 'fastercache' hooks modules inside them .*set compile: none"):
        engine_for(save_tiny_dit(tmp_path), cache={"name": "fastercache"}, compile="regional")


def test_a_multi_process_plan_is_refused(engines):
    from ditserve.compile import Compiler
    from ditserve.config import AccelPlan

    plan = AccelPlan.model_validate({"parallel": {"name": "cfg"}, "compile": "regional"})
    with pytest.raises(PlanError, match="runs the model in its own ranks; set compile: none"):
        Compiler(plan, engines[0].model)


# -- every strategy of every registry, on the embedded digits-dit (slow: one inductor compile each) ------------


def strategies() -> list[tuple[str, str]]:
    from ditserve.registry import CACHES, QUANTIZERS, SAMPLERS

    return [(section, name) for section, registry in (("cache", CACHES), ("quant", QUANTIZERS),
                                                       ("sampler", SAMPLERS)) for name in registry.names()]  # fmt: skip


CALIBRATION = {"calibration_samples": 1, "calibration_steps": 2}
SETTINGS = {
    "w8a8": CALIBRATION,
    "svdquant": CALIBRATION,
    "mixed": {**CALIBRATION, "probe_inputs": 1},
    "dc-solver": {"ratios": {6: [1.0] * 6}},
    "sampler-scheduler": {  # its stages are own solvers; dc-solver with unit ratios for the sweep's 6 steps
        "stages": [{"sampler": {"name": "paradigms", "window": 1}, "steps": 2},
                   {"sampler": {"name": "dc-solver", "ratios": {4: [1.0] * 4}}}],
    },
}  # fmt: skip
"""Fields a strategy needs on digits-dit beyond its defaults (short calibrations; the scheduler's stages)."""


@pytest.mark.slow
@pytest.mark.parametrize(("section", "name"), strategies())
def test_every_strategy_compiles_or_is_refused_with_the_reason(section, name):
    from ditserve.config import load_config, parse_config
    from ditserve.engine import Engine

    data = load_config("builtin:digits-dit").model_dump(mode="json")
    data["plan"][section] = {"name": name, **SETTINGS.get(name, {})}
    try:
        eager = Engine(parse_config(data))
    except PlanError:
        pytest.skip(f"{section} {name} does not load on digits-dit uncompiled either (e.g. needs calibration)")
    data["plan"]["compile"] = "regional"
    try:
        compiled = Engine(parse_config(data))
    except PlanError as err:
        assert "compile: regional" in str(err)
        return
    request = GenerationRequest(class_label=3, steps=6, seed=1)
    a, b = eager.generate(request), compiled.generate(request)
    if section == "quant":
        # Activations rounded to a grid: compiled code computes the scales with other roundings (fused, reciprocals),
        # which moves values across rounding steps (an fp8 step is 1/8 of the value): the compiled plan must be as
        # faithful to the unquantized model as the eager plan is, not equal to it.
        data["plan"] |= {"quant": {"name": "none"}, "compile": "none"}
        exact = Engine(parse_config(data)).generate(request).images
        eager_error, compiled_error = ((x.images - exact).abs().mean().item() for x in (a, b))
        assert compiled_error <= 1.5 * eager_error + 1e-3
    else:
        assert (a.images - b.images).abs().max().item() <= 1e-3
    assert a.stats.block_evaluations == b.stats.block_evaluations


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "graphs"])
def test_the_whole_transformer_compiled_runs_as_eager(tmp_path, mode):
    path = save_tiny_dit(tmp_path)
    eager, compiled = engine_for(path, sampler={"name": "ddim"}), engine_for(path, compile=mode)
    assert compiled.compiler.mode == mode
    assert_same_run(eager, compiled)
