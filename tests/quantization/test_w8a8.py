"""W8A8 (SmoothQuant): the battery; on activations with outlier channels its smoothing keeps the error where it is
without them."""

from __future__ import annotations

from ditserve_testing import engine_for, save_tiny_dit

from .battery import CALIB, REQUEST, Calibrated, QuantizerBattery, ShrinksWeights

PLAN = {"name": "w8a8", **CALIB}


class TestW8A8(QuantizerBattery, ShrinksWeights, Calibrated):
    name = "w8a8"
    plan = PLAN
    max_error = 0.05
    most = 0.32  # at width 32 the fp32 per-channel scales and smoothing factors weigh beside the int8 rows (0.305)


def outlier_channels(transformer, scale: float = 100.0) -> None:
    """Make two channels of every attention output projection's input `scale`× larger, leaving the model's
    function unchanged: rows of `to_v` (weight and bias) times `scale`, the same columns of `to_out` divided by
    it. Activation outlier channels like these are what SmoothQuant was made for (Xiao et al., 2023)."""
    for block in transformer.transformer_blocks:
        for channel in (3, 17):
            block.attn1.to_v.weight[channel] *= scale
            block.attn1.to_v.bias[channel] *= scale
            block.attn1.to_out[0].weight[:, channel] /= scale


def test_smoothing_keeps_the_error_on_activations_with_outlier_channels(tmp_path):
    """Per-token int8 activations lose the small channels of a token that has an outlier channel; SmoothQuant
    moves the outliers' range into the weights. Measured mean |Δ| against each model's own unquantized output:
    6.9e-4 without outliers, 6.3e-4 with them; with the smoothing replaced by s = 1 (plain per-token int8, the
    stand-in), 4.2e-3 with them, and this test fails."""
    plain_dir = save_tiny_dit(tmp_path / "plain", head_dim=16, sample_size=16)
    outlier_dir = save_tiny_dit(tmp_path / "outliers", head_dim=16, sample_size=16, edit=outlier_channels)
    errors = {}
    for kind, path in (("plain", plain_dir), ("outliers", outlier_dir)):
        reference = engine_for(path).generate(REQUEST).images
        quantized = engine_for(path, quant=PLAN).generate(REQUEST).images
        errors[kind] = float((quantized - reference).abs().mean())
    assert errors["outliers"] <= 2 * errors["plain"], errors
