"""Activation-aware mixed precision (MixDQ / ViDiT-Q): the battery; both budgets hold and mix widths; content and
quality errors are told apart; an outlier token costs the other tokens nothing; a group that does not divide a
layer is refused at load."""

from __future__ import annotations

import pytest
import torch
from ditserve_testing import engine_for

from ditserve.errors import PlanError
from ditserve.quantization.mixdq import BalancedLinear, decoupled_errors, quantize_activations

from .battery import CALIB, Calibrated, QuantizerBattery, ShrinksWeights

PLAN = {"name": "mixdq", "group": 32, "probe_inputs": 1, "probe_rows": 2, **CALIB}


class TestMixDQ(QuantizerBattery, ShrinksWeights, Calibrated):
    name = "mixdq"
    plan = PLAN
    max_error = 0.15
    most = 0.3


def test_both_budgets_hold_and_each_mixes_widths(quant_dit_dir):
    engine = engine_for(quant_dit_dir, quant={**PLAN, "weight_bits": 6.0, "activation_bits": 6.0})
    layers = [m for m in engine.model.transformer.modules() if isinstance(m, BalancedLinear)]
    sizes = [m.in_features * m.out_features for m in layers]
    for attribute in ("weight_bits", "act_bits"):
        widths = [getattr(m, attribute) for m in layers]
        assert set(widths) == {4, 8}, attribute
        assert sum(w * n for w, n in zip(widths, sizes, strict=True)) / sum(sizes) <= 6.0, attribute


def test_content_and_quality_errors_are_told_apart():
    """A change constant over each 2×2 patch is content only; a checkerboard within patches is quality only."""
    torch.manual_seed(0)
    reference = torch.randn(2, 1, 8, 8)
    blocky = torch.randn(2, 1, 4, 4).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0
    content, quality = decoupled_errors([reference + 0.1 * blocky], [reference]).tolist()
    assert content > 0 and quality == pytest.approx(0, abs=1e-6)
    content, quality = decoupled_errors([reference + 0.1 * checker], [reference]).tolist()
    assert content == pytest.approx(0, abs=1e-6) and quality > 0


@pytest.mark.parametrize("bits", [8, 4])
def test_an_outlier_token_costs_the_other_tokens_nothing(bits):
    """Per-token scales: a BOS-like token 1000× larger leaves the other tokens' rounding exactly as without it (the
    reason MixDQ's special case for the text encoder's first token is not needed here)."""
    torch.manual_seed(0)
    tokens = torch.randn(6, 64)
    with_outlier = torch.cat([1000 * torch.randn(1, 64), tokens])
    assert torch.equal(quantize_activations(with_outlier, bits, 32)[1:], quantize_activations(tokens, bits, 32))


def test_a_group_that_does_not_divide_a_layer_is_refused_at_load(quant_dit_dir):
    with pytest.raises(PlanError, match=r"layer transformer_blocks\.0\..* 32 inputs, not a multiple of group 64"):
        engine_for(quant_dit_dir, quant={**PLAN, "group": 64})
