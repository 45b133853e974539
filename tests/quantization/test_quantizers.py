"""Every quantizer on a real (tiny, random) DiT through the engine: it rewrites the block layers,
keeps the output close, shrinks the weights, composes with a cache and a non-default sampler, and
its calibration can be stored and reused."""

from __future__ import annotations

import json

import pytest
import torch
from ditserve_testing import engine_for

from ditserve.errors import PlanError
from ditserve.quantization.layers import block_linears, weight_bytes
from ditserve.request import GenerationRequest

CALIB = {"calibration_samples": 2, "calibration_steps": 3}
PLANS = {
    "int8": {"name": "int8"},
    "w8a8": {"name": "w8a8", **CALIB},
    "fp8": {"name": "fp8"},
    "svdquant": {"name": "svdquant", "group": 32, "rank": 4, **CALIB},
    "mixed": {"name": "mixed", "group": 32, "avg_bits": 6.0, "probe_inputs": 2, **CALIB},
    "sage": {"name": "sage"},
    "sage-tile-fp8": {"name": "sage", "scales": "tile", "pv": "fp8"},
    "sparse": {"name": "sparse", "sparsity": 0.5, "block": 16},
}
MAX_ERROR = {"int8": 0.02, "w8a8": 0.05, "fp8": 0.1, "svdquant": 0.25, "mixed": 0.25, "sage": 0.02,
             "sage-tile-fp8": 0.05, "sparse": 0.5}  # fmt: skip
"""Mean |Δ| in [0, 1] pixels allowed against the unquantized output of the random model (4 steps)."""


@pytest.fixture(scope="session")
def quant_dit_dir(tmp_path_factory):
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    path = tmp_path_factory.mktemp("quant-dit")
    torch.manual_seed(0)
    DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=1, num_layers=2,
        sample_size=16, patch_size=2, num_embeds_ada_norm=10,
    ).save_pretrained(path / "transformer")  # fmt: skip
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(path / "scheduler")
    (path / "labels.json").write_text(json.dumps({"id2label": {str(i): f"label{i}" for i in range(10)}}))
    return path


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


REQUEST = GenerationRequest(class_label=3, steps=4, seed=11, num_images=2)


def images(engine) -> torch.Tensor:
    return engine.generate(REQUEST).images


@pytest.fixture(scope="module")
def baseline(quant_dit_dir):
    return images(engine_for(quant_dit_dir))


def test_registry_lists_every_quantizer():
    from ditserve.registry import QUANTIZERS

    assert {plan["name"] for plan in PLANS.values()} | {"none"} <= set(QUANTIZERS.names())


@pytest.mark.parametrize("name", list(PLANS))
def test_quantizer_stays_close_to_unquantized_and_changes_something(name, quant_dit_dir, baseline):
    engine = engine_for(quant_dit_dir, quant=PLANS[name])
    out = images(engine)
    assert torch.isfinite(out).all()
    error = (out - baseline).abs().mean().item()
    assert error <= MAX_ERROR[name], f"{name}: mean |Δ| {error:.4f} > {MAX_ERROR[name]}"
    assert not torch.equal(out, baseline), f"{name} left the output bit-identical: nothing was quantized"


@pytest.mark.parametrize(("name", "most"), [("int8", 0.27), ("fp8", 0.3), ("svdquant", 0.45), ("mixed", 0.3)])
def test_weight_quantizers_shrink_block_layers(name, most, quant_dit_dir):
    plain = engine_for(quant_dit_dir)
    before = sum(weight_bytes(m) for m in block_linears(plain.model).values())
    engine = engine_for(quant_dit_dir, quant=PLANS[name])
    assert not block_linears(engine.model), "float linears left in the blocks"
    blocks = [group.blocks for group in engine.model.adapter.block_groups(engine.model.transformer)]
    layers = [
        m
        for block in blocks
        for m in block.modules()
        if type(m).__name__.endswith("Linear") and m.__module__.startswith("ditserve")
    ]
    assert layers, f"{name} installed no quantized layer"
    assert sum(weight_bytes(m) for m in layers) <= most * before


def test_int8_leaves_no_float_matrix_in_the_transformer_and_shrinks_it_near_4x(quant_dit_dir):
    plain = engine_for(quant_dit_dir)
    engine = engine_for(quant_dit_dir, quant=PLANS["int8"])
    left = [
        n for n, m in engine.model.transformer.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
    ]
    assert not left, f"float layers left: {left}"
    # width 32: fp16 scales and biases weigh 2/32 of a row against the int8 row's 1/4 (the digits model: 3.9×)
    assert weight_bytes(plain.model.transformer) / weight_bytes(engine.model.transformer) >= 3.5
    blocks_only = engine_for(quant_dit_dir, quant={"name": "int8", "scope": "blocks"})
    assert weight_bytes(blocks_only.model.transformer) > weight_bytes(engine.model.transformer)


def test_svdquant_over_the_whole_transformer_stores_nothing_in_fp32(quant_dit_dir, baseline):
    """scope: transformer stores what it does not make 4-bit (embedding tables, the patch convolution) in
    fp16 and still computes it in fp32: the 16-bit deployment its size is compared with."""
    plan = {**PLANS["svdquant"], "scope": "transformer"}
    engine = engine_for(quant_dit_dir, quant=plan)
    stored = engine.model.transformer.state_dict()
    assert not [k for k, v in stored.items() if v.dtype == torch.float32]
    assert any("embedding_table.parametrizations.weight.original" in k for k in stored)
    table = engine.model.transformer.get_submodule("transformer_blocks.0.norm1.emb.class_embedder.embedding_table")
    assert table.weight.dtype == torch.float32  # computed in fp32, from fp16
    blocks_only = engine_for(quant_dit_dir, quant=PLANS["svdquant"])
    assert weight_bytes(engine.model.transformer) < weight_bytes(blocks_only.model.transformer)
    assert (images(engine) - baseline).abs().mean() <= MAX_ERROR["svdquant"]


@pytest.mark.parametrize("name", list(PLANS))
def test_quantizer_composes_with_a_cache_and_a_sampler(name, quant_dit_dir):
    plan = {"quant": PLANS[name], "cache": {"name": "fora", "interval": 2}, "sampler": {"name": "ddpm", "steps": 4}}
    plain = engine_for(quant_dit_dir, cache=plan["cache"], sampler=plan["sampler"]).generate(REQUEST)
    result = engine_for(quant_dit_dir, **plan).generate(REQUEST)
    assert torch.isfinite(result.images).all()
    assert result.stats.block_evaluations < result.stats.block_evaluations_full  # the cache skipped blocks
    assert result.stats.block_evaluations == plain.stats.block_evaluations
    assert (result.images - plain.images).abs().mean() <= MAX_ERROR[name]


def test_stored_calibration_gives_the_same_model_as_calibrating_at_load(quant_dit_dir, tmp_path):
    import yaml

    from ditserve.cli import main

    config = tmp_path / "model.yaml"
    plan = {"quant": PLANS["svdquant"]}
    config.write_text(
        yaml.safe_dump({"model": {"name": "q", "path": str(quant_dit_dir), "family": "dit"}, "plan": plan})
    )
    stored = tmp_path / "svd.safetensors"
    assert (
        main(["calibrate", "--config", str(config), "--quant", "svdquant", "--out", str(stored), "--samples", "2"]) == 0
    )
    from_file = images(engine_for(quant_dit_dir, quant={**PLANS["svdquant"], "calibration": str(stored)}))
    assert torch.equal(from_file, images(engine_for(quant_dit_dir, quant=PLANS["svdquant"])))


def test_missing_calibration_file_names_the_command(quant_dit_dir, tmp_path):
    with pytest.raises(PlanError, match="ditserve calibrate --quant w8a8"):
        engine_for(quant_dit_dir, quant={"name": "w8a8", "calibration": str(tmp_path / "absent.safetensors")})


def test_mixed_precision_respects_the_bit_budget_and_mixes(quant_dit_dir):
    engine = engine_for(quant_dit_dir, quant=PLANS["mixed"])
    kinds = {type(m).__name__: m for m in engine.model.transformer.modules()}
    assert "Int8WeightLinear" in kinds and "Int4WeightLinear" in kinds
    bits = sum(
        (8 if type(m).__name__ == "Int8WeightLinear" else 4) * m.in_features * m.out_features
        for m in engine.model.transformer.modules()
        if type(m).__name__ in ("Int8WeightLinear", "Int4WeightLinear")
    )
    params = sum(
        m.in_features * m.out_features
        for m in engine.model.transformer.modules()
        if type(m).__name__ in ("Int8WeightLinear", "Int4WeightLinear")
    )
    assert bits / params <= 6.0


def test_sparse_attention_at_zero_sparsity_is_exact(quant_dit_dir, baseline):
    out = images(engine_for(quant_dit_dir, quant={"name": "sparse", "sparsity": 0.0, "block": 16}))
    assert (out - baseline).abs().max() < 1e-4


def test_attention_backend_refuses_attention_it_cannot_replace(quant_dit_dir):
    from diffusers.models.attention_processor import AttnProcessor

    from ditserve.quantization import attention

    engine = engine_for(quant_dit_dir)
    engine.model.transformer.transformer_blocks[1].attn1.set_processor(AttnProcessor())
    with pytest.raises(PlanError, match="uses AttnProcessor; use a weight quantizer"):
        attention.install(engine.model, lambda q, k, v: q, "sage")


def test_calibrate_refuses_a_quantizer_without_calibration(quant_dit_dir, tmp_path):
    from ditserve.calibrate import calibrate

    config = tmp_path / "model.yaml"
    config.write_text(json.dumps({"model": {"name": "q", "path": str(quant_dit_dir), "family": "dit"}}))
    with pytest.raises(PlanError, match="needs no calibration; calibrated ones: mixed, svdquant, w8a8"):
        calibrate(str(config), "quant", "int8", None)
