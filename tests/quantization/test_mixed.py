"""Mixed int4/int8 precision: the battery; the bit budget holds and both widths are used."""

from __future__ import annotations

from ditserve_testing import engine_for

from .battery import CALIB, Calibrated, QuantizerBattery, ShrinksWeights

PLAN = {"name": "mixed", "group": 32, "avg_bits": 6.0, "probe_inputs": 2, **CALIB}


class TestMixed(QuantizerBattery, ShrinksWeights, Calibrated):
    name = "mixed"
    plan = PLAN
    max_error = 0.25
    most = 0.3


def test_mixed_precision_respects_the_bit_budget_and_mixes(quant_dit_dir):
    engine = engine_for(quant_dit_dir, quant=PLAN)
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
