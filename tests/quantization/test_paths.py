"""The quantizers' path choice: each alternative path computes what the default path computes, and a CPU
runs the default (the torch references, whose fidelity is the point there)."""

from __future__ import annotations

import pytest
import torch

from ditserve.quantization.svdquant import SVDQuantLinear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_svdquant_dequantized_path_computes_the_kernels_products(dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96)
    layer = SVDQuantLinear(linear, smooth=torch.rand(256) + 0.5, rank=8, group=64)
    x = torch.randn(3, 10, 256).to(dtype)
    expected = layer(x).float()
    layer.dequantized = True
    got = layer(x).float()
    error = ((got - expected).norm() / expected.norm()).item()
    assert error < (1e-6 if dtype == torch.float32 else 1e-2)  # the same products; bf16 rounds each operand
    if dtype == torch.bfloat16:  # the reference multiplies in fp32: a path that ran would differ in the last bits
        assert error > 0


def test_on_a_cpu_auto_runs_our_kernels_reference_and_says_so(tmp_path):
    from ditserve_testing import engine_for, save_tiny_dit

    engine = engine_for(save_tiny_dit(tmp_path), quant={"name": "sage"})
    assert engine.quantizer.runs == "ours"


def test_describe_gives_each_path_against_the_baseline():
    from ditserve.quantization.paths import describe

    times = {"kernel": 2.0, "dequantized": 0.8, "bf16": 1.0}
    assert describe("dequantized", times, "bf16") == (
        "dequantized (measured at load vs bf16: kernel 0.50x, dequantized 1.25x, bf16 1.00x)"
    )
