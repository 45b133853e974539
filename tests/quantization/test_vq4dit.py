"""VQ4DiT vector-quantized weights: the battery; codes packed at their bit width; the stored bits per weight; the
calibrated assignment against nearest-codeword assignment; the budget's allocation; the op's reference; the refusal
of a layer its group does not divide."""

from __future__ import annotations

import pytest
import torch
from ditserve_testing import engine_for, save_tiny_dit

from ditserve.errors import PlanError
from ditserve.quantization.vq4dit import (
    VQ4DiTConfig,
    VQLinear,
    allocate,
    fit_codes,
    layer_bits,
    output_error,
    stored_bits_per_weight,
)
from ditserve_kernels.vq_gemm import dequantize, pack_bits, packed_bytes, unpack_bits, vq_gemm

from .battery import CALIB, Calibrated, QuantizerBattery, ShrinksWeights

PLAN = {"name": "vq4dit", "group": 32, "probe_inputs": 1, "probe_rows": 2, **CALIB}


class TestVQ4DiT(QuantizerBattery, ShrinksWeights, Calibrated):
    name = "vq4dit"
    plan = PLAN
    max_error = 0.15
    most = 0.2  # a 3-bit budget (codes, codebooks, scales) of 32, plus fp16 biases


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_pack_into_their_bit_width(bits):
    codes = torch.randint(0, 2**bits, (3, 37))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, packed_bytes(37, bits)) == (3, -(-37 * bits // 8))
    assert torch.equal(unpack_bits(packed, bits, 37), codes)


def correlated(rows: int, cols: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight (rows, cols) and the second moment of inputs with correlated channels, as a DiT layer sees."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(4096, cols, generator=g) @ (torch.randn(cols, cols, generator=g) / 4 + torch.eye(cols))
    return torch.randn(rows, cols, generator=g), inputs.T @ inputs / inputs.shape[0]


def test_a_layer_stores_the_bits_per_weight_its_width_costs():
    """Codes, codebook and scales, measured from the stored tensors, are what the allocation counts: at width 128,
    5-bit codes per 2 inputs are 2.5 bits, an fp16 scale per 64 inputs 0.25, the 32 codewords of 2 0.016."""
    weight, hessian = correlated(512, 128)
    layer = VQLinear(torch.nn.Linear(128, 512), *fit_codes(weight, hessian, VQ4DiTConfig(), 5), 5)
    assert layer.codes.dtype == torch.uint8 and layer.codebook.shape == (32, 2) and layer.scale.shape == (512, 2)
    assert stored_bits_per_weight([layer]) == layer_bits(512, 128, 2, 64, 5) / (512 * 128) == pytest.approx(2.766, 1e-3)


def test_the_budget_holds_and_widens_the_sensitive_layers():
    """Under a 3-bit budget the layer measured 100× more sensitive gets wider codes, and the total stays within it."""
    shapes = {"a": (128, 128), "b": (128, 128), "c": (512, 128)}
    widths = allocate(shapes, {"a": 1e-2, "b": 1e-4, "c": 1e-3}, dim=2, group=64, budget=3.0)
    assert widths["a"] > widths["c"] > widths["b"]
    total = sum(layer_bits(*shapes[n], 2, 64, widths[n]) for n in shapes)
    assert total <= 3.0 * sum(r * c for r, c in shapes.values())


def test_calibrated_assignment_beats_the_nearest_codeword():
    """On correlated inputs, GPTQ's ordering and VQ4DiT's refined candidates leave less output error than each
    sub-vector at its nearest codeword (k-means alone, the stand-in); refinement does not undo GPTQ's gain."""
    weight, hessian = correlated(64, 64)
    errors = {}
    for label, fields in {
        "nearest": {"assignment": "nearest"},
        "gptq": {},
        "refined": {"refine_steps": 60},
    }.items():
        codes, codebook, scales = fit_codes(weight, hessian, VQ4DiTConfig(**fields), 4)
        decoded = codebook[codes.reshape(-1)].reshape(weight.shape) * scales.repeat_interleave(64, dim=1)
        errors[label] = float(output_error(decoded, hessian, weight))
    assert errors["gptq"] < 0.8 * errors["nearest"], errors
    assert errors["refined"] <= errors["gptq"], errors


def test_the_op_computes_with_the_decoded_weight():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 24, generator=g)
    codes = pack_bits(torch.randint(0, 8, (7, 12), generator=g), 3)
    codebook, scale, bias = torch.randn(8, 2, generator=g).half(), torch.rand(7, 3).half(), torch.randn(7)
    weight = codebook.float()[unpack_bits(codes, 3, 12)].reshape(7, 24) * scale.float().repeat_interleave(8, dim=1)
    assert torch.equal(dequantize(codes, codebook, scale, 3, 24), weight)
    assert torch.allclose(vq_gemm(x, codes, codebook, scale, bias, 3, torch.float32), x @ weight.T + bias, atol=1e-5)
    torch.library.opcheck(vq_gemm, (x, codes, codebook, scale, bias, 3, torch.float32))


def test_a_layer_its_group_does_not_divide_is_refused_at_load(tmp_path):
    """Width 24 (2 heads of 12): groups of 16 do not divide it (refused, naming the layer and the fix)."""
    narrow = save_tiny_dit(tmp_path / "narrow", heads=2, head_dim=12, sample_size=8)
    refusal = r"layer transformer_blocks\.0\..* 24 inputs, not a multiple of group 16 and dim 2"
    with pytest.raises(PlanError, match=refusal):
        engine_for(narrow, quant={**PLAN, "group": 16})
