"""Attention backend `sage`: every block's attention through the 8-bit SageAttention kernel
(`ditserve_kernels.sage_attention`: smoothed K, int8 QKᵀ with per-token or per-tile scales, fp16 or
fp8 PV). Triton on a GPU; on a CPU the op's torch reference computes the same quantized attention
(fidelity real, no speedup). benchmarks/results/kernels-gpu.md has each option's speed and error on
an H200: per-tile scales are the fastest, per-token the most accurate."""

from __future__ import annotations

import functools
from typing import Literal

from ditserve.quantization import attention
from ditserve.quantization.base import QuantConfig, Quantizer
from ditserve.registry import QUANTIZERS


class SageConfig(QuantConfig):
    name: Literal["sage"] = "sage"
    scales: Literal["token", "tile"] = "token"
    """int8 scale granularity of Q and K: one per token (more accurate) or one per kernel tile (faster)."""
    pv: Literal["fp16", "fp8"] = "fp16"
    """Precision of the P·V product; fp8 (E4M3) needs a GPU of compute capability ≥ 8.9 (Ada, Hopper)."""


@QUANTIZERS.register("sage")
class SageAttentionBackend(Quantizer):
    """8-bit attention (SageAttention-style int8 QKᵀ, fp16 PV) in every transformer block."""

    Config = SageConfig

    def apply(self, model) -> None:
        from ditserve_kernels.sage_attention import sage_attention

        per_token = (self.config.scales == "token",) * 2
        pv_fp8 = self.config.pv == "fp8"
        attention.install(model, functools.partial(sage_attention, pv_fp8=pv_fp8, per_token=per_token), self.name)
