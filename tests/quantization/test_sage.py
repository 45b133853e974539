"""SageAttention (8-bit attention): the battery with per-block and per-tile fp8 settings; an attention processor it
cannot replace is refused."""

from __future__ import annotations

import pytest
from ditserve_testing import engine_for

from ditserve.errors import PlanError

from .battery import QuantizerBattery


class TestSage(QuantizerBattery):
    name = "sage"
    plan = {"name": "sage"}
    max_error = 0.02


class TestSageTileFP8(QuantizerBattery):
    name = "sage"
    plan = {"name": "sage", "scales": "tile", "pv": "fp8"}
    max_error = 0.05


def test_attention_backend_refuses_attention_it_cannot_replace(quant_dit_dir):
    from diffusers.models.attention_processor import AttnProcessor

    from ditserve.quantization import attention

    engine = engine_for(quant_dit_dir)
    engine.model.transformer.transformer_blocks[1].attn1.set_processor(AttnProcessor())
    with pytest.raises(PlanError, match="uses AttnProcessor; use a weight quantizer"):
        attention.install(engine.model, lambda q, k, v: q, "sage")
