"""SVDQuant W4A4: the battery; over the whole transformer it stores nothing in fp32."""

from __future__ import annotations

import torch
from ditserve_testing import engine_for

from ditserve.quantization.layers import weight_bytes

from .battery import CALIB, Calibrated, QuantizerBattery, ShrinksWeights, images

PLAN = {"name": "svdquant", "group": 32, "rank": 4, **CALIB}


class TestSVDQuant(QuantizerBattery, ShrinksWeights, Calibrated):
    name = "svdquant"
    plan = PLAN
    max_error = 0.25
    most = 0.45


def test_svdquant_over_the_whole_transformer_stores_nothing_in_fp32(quant_dit_dir, baseline):
    """scope: transformer stores what it does not make 4-bit (embedding tables, the patch convolution) in
    fp16 and still computes it in fp32: the 16-bit deployment its size is compared with."""
    engine = engine_for(quant_dit_dir, quant={**PLAN, "scope": "transformer"})
    stored = engine.model.transformer.state_dict()
    assert not [k for k, v in stored.items() if v.dtype == torch.float32]
    assert any("embedding_table.parametrizations.weight.original" in k for k in stored)
    table = engine.model.transformer.get_submodule("transformer_blocks.0.norm1.emb.class_embedder.embedding_table")
    assert table.weight.dtype == torch.float32  # computed in fp32, from fp16
    blocks_only = engine_for(quant_dit_dir, quant=PLAN)
    assert weight_bytes(engine.model.transformer) < weight_bytes(blocks_only.model.transformer)
    assert (images(engine) - baseline).abs().mean() <= TestSVDQuant.max_error
