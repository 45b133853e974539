"""Attention backend `sparse`: block-sparse attention that skips the key blocks a pooled estimate
rates lowest (`ditserve_kernels.sparse_attention`, SpargeAttn-style). Triton on a GPU; on a CPU the
op's reference computes the same masked attention (fidelity real, no speedup)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ditserve.quantization import attention
from ditserve.quantization.base import QuantConfig, Quantizer
from ditserve.registry import QUANTIZERS


class SparseConfig(QuantConfig):
    name: Literal["sparse"] = "sparse"
    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    """Fraction of key blocks skipped per query block (0 is exact attention)."""
    block: int | None = Field(None, ge=16, le=256)
    """Tokens per query and key block; None takes the kernel's tile (128 × 64 on a GPU). Sequences
    shorter than two blocks skip nothing, so small models want a small block (a power of two)."""


@QUANTIZERS.register("sparse")
class SparseAttentionBackend(Quantizer):
    """Block-sparse attention skipping the lowest-rated key blocks (SpargeAttn-style) in every block."""

    Config = SparseConfig

    def apply(self, model) -> None:
        from ditserve_kernels.sparse_attention import block_sparse_attention, default_blocks, select_blocks

        sparsity = self.config.sparsity
        block_m, block_n = (self.config.block, self.config.block) if self.config.block else default_blocks()

        def attend(q, k, v):
            index = select_blocks(q, k, sparsity, block_m, block_n)
            return block_sparse_attention(q, k, v, index, block_m, block_n)

        attention.install(model, attend, self.name)
