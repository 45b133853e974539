"""Attention backend `sage`: every block's attention through the 8-bit SageAttention kernel
(`ditserve_kernels.sage_attention`: smoothed K, per-block int8 QKᵀ, fp16 PV). Triton on a GPU; on a
CPU the op's torch reference computes the same quantized attention (fidelity real, no speedup)."""

from __future__ import annotations

from typing import Literal

from ditserve.quantization import attention
from ditserve.quantization.base import QuantConfig, Quantizer
from ditserve.registry import QUANTIZERS


class SageConfig(QuantConfig):
    name: Literal["sage"] = "sage"


@QUANTIZERS.register("sage")
class SageAttentionBackend(Quantizer):
    """8-bit attention (SageAttention-style int8 QKᵀ, fp16 PV) in every transformer block."""

    Config = SageConfig

    def apply(self, model) -> None:
        from ditserve_kernels.sage_attention import sage_attention

        attention.install(model, sage_attention, self.name)
