"""TFM-PTQ time-feature maintenance: the battery; the time-feature layers are found by what their input depends on;
the maintained bias keeps the mean modulation; a calibration without time-feature statistics is refused at load."""

from __future__ import annotations

import pytest
import torch
from ditserve_testing import engine_for

from ditserve.calibrate import record
from ditserve.errors import PlanError
from ditserve.quantization.adaptive_rounding import round_to_nearest
from ditserve.quantization.calibration import TransformerInputs
from ditserve.quantization.layers import block_linears
from ditserve.quantization.lbq import BlockFloat, LowBitFloatLinear
from ditserve.quantization.lowbit_formats import FORMATS
from ditserve.quantization.tfm_ptq import maintained_bias, time_feature_layers

from .battery import CALIB, Calibrated, QuantizerBattery, ShrinksWeights

PLAN = {"name": "tfm-ptq", "timesteps": 6, **CALIB}


class TestTFMPTQ(QuantizerBattery, ShrinksWeights, Calibrated):
    name = "tfm-ptq"
    plan = PLAN
    max_error = 0.1
    most = 0.2  # lbq's fp4: 4.5 bits of 32, plus fp16 biases and the fp32 tensor scale per layer


def test_the_time_feature_layers_are_the_timestep_mlp_and_the_adaln_modulation(quant_dit_dir):
    """On a DiT: each block's timestep MLP and adaLN linear take the timestep (and class) alone; attention and
    feed-forward layers see the image."""
    engine = engine_for(quant_dit_dir)
    recorder = TransformerInputs()
    record(engine, recorder, 2, 3)
    linears = block_linears(engine.model)
    found = set(time_feature_layers(engine.model, recorder.calls[0], linears))
    expected = {n for n in linears if ".norm1." in n}  # norm1.emb.timestep_embedder.linear_1/2, norm1.linear
    assert found == expected and len(found) == 3 * 2


def test_the_maintained_bias_keeps_the_mean_output():
    """With b + (W − Ŵ)·E[x], the rounded layer's mean output over the inputs is the float layer's (to fp16's
    rounding of the bias); with the plain bias it is off by the rounding's mean error."""
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    inputs = torch.randn(500, 64, generator=g) + 2.0  # a temporal feature's offset (SiLU outputs are mostly ≥ 0)
    quantizer = BlockFloat(FORMATS["e2m1"], "nv", linear.weight.detach())
    rounded, stored = round_to_nearest(linear.weight, quantizer)
    layer = LowBitFloatLinear(linear, rounded, stored, quantizer)
    want = linear(inputs).mean(dim=0).detach()
    plain = (layer(inputs).mean(dim=0) - want).abs().max()
    layer.bias = maintained_bias(linear, layer.dequantized_weight(), inputs.mean(dim=0))
    kept = (layer(inputs).mean(dim=0) - want).abs().max()
    assert kept < 2e-3 < plain, (kept, plain)


def test_a_calibration_without_time_features_is_refused_at_load(quant_dit_dir, tmp_path):
    """lbq's statistics (no finite-set entries) given to tfm-ptq: refused, saying why and what to use."""
    import yaml

    from ditserve.cli import main

    config = tmp_path / "model.yaml"
    model = {"name": "q", "path": str(quant_dit_dir), "family": "dit"}
    config.write_text(yaml.safe_dump({"model": model, "plan": {"quant": {"name": "lbq", **CALIB}}}))
    stored = tmp_path / "lbq.safetensors"
    assert main(["calibrate", "--config", str(config), "--quant", "lbq", "--out", str(stored)]) == 0
    with pytest.raises(PlanError, match="no linear layer in scope takes the timestep features alone.*use lbq"):
        engine_for(quant_dit_dir, quant={**PLAN, "calibration": str(stored)})
