"""Block-sparse attention: the battery; at sparsity 0 it is exact."""

from __future__ import annotations

from ditserve_testing import engine_for

from .battery import QuantizerBattery, images


class TestSparse(QuantizerBattery):
    name = "sparse"
    plan = {"name": "sparse", "sparsity": 0.5, "block": 16}
    max_error = 0.5


def test_sparse_attention_at_zero_sparsity_is_exact(quant_dit_dir, baseline):
    out = images(engine_for(quant_dit_dir, quant={"name": "sparse", "sparsity": 0.0, "block": 16}))
    assert (out - baseline).abs().max() < 1e-4
