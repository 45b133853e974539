"""int8 weights: the battery; over the whole transformer it leaves no float matrix and shrinks it near 4×."""

from __future__ import annotations

import torch
from ditserve_testing import engine_for

from ditserve.quantization.layers import weight_bytes

from .battery import QuantizerBattery, ShrinksWeights


class TestInt8(QuantizerBattery, ShrinksWeights):
    name = "int8"
    plan = {"name": "int8"}
    max_error = 0.02
    most = 0.27


def test_int8_leaves_no_float_matrix_in_the_transformer_and_shrinks_it_near_4x(quant_dit_dir):
    plain = engine_for(quant_dit_dir)
    engine = engine_for(quant_dit_dir, quant={"name": "int8"})
    left = [
        n for n, m in engine.model.transformer.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
    ]
    assert not left, f"float layers left: {left}"
    # width 32: fp16 scales and biases weigh 2/32 of a row against the int8 row's 1/4 (the digits model: 3.9×)
    assert weight_bytes(plain.model.transformer) / weight_bytes(engine.model.transformer) >= 3.5
    blocks_only = engine_for(quant_dit_dir, quant={"name": "int8", "scope": "blocks"})
    assert weight_bytes(blocks_only.model.transformer) > weight_bytes(engine.model.transformer)
