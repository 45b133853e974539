"""Attention backend `sage`: every block's attention through 8-bit SageAttention, on the fastest path here.

Paths (`path`):
- `ours`: `ditserve_kernels.sage_attention` (smoothed K, int8 QKᵀ with per-token or per-tile scales, fp16 or
  fp8 PV): Triton on a GPU; on a CPU the op's torch reference computes the same quantized attention (fidelity
  real, no speedup).
- `sageattention`: the SageAttention authors' Triton kernel (PyPI `sageattention`, v1: per-block int8 QKᵀ,
  fp16 PV; head dims 64, 96, 128), where that package is installed.
- `sdpa`: torch's `scaled_dot_product_attention` in bf16, i.e. the model's own attention: what runs where no
  8-bit kernel beats it (then `sage` saves nothing and says so).
- `auto` (default): on a GPU, the fastest of the three at the model's attention shape (heads, head size,
  tokens at the default image size, a CFG batch of 2), timed at load; the log and `describe()` say which
  runs and how the others compared. On a CPU, `ours` (the point there is the fidelity of 8-bit attention).
benchmarks/results/kernels-gpu.md has each option's speed and error on an H200.
"""

from __future__ import annotations

import functools
from typing import Literal

from ditserve.errors import PlanError
from ditserve.quantization import attention
from ditserve.quantization.base import QuantConfig, Quantizer
from ditserve.registry import QUANTIZERS


class SageConfig(QuantConfig):
    name: Literal["sage"] = "sage"
    scales: Literal["token", "tile"] = "token"
    """int8 scale granularity of Q and K in our kernel: one per token (more accurate) or per kernel tile."""
    pv: Literal["fp16", "fp8"] = "fp16"
    """Precision of the P·V product in our kernel; fp8 (E4M3) needs a GPU of compute capability ≥ 8.9."""
    path: Literal["auto", "ours", "sageattention", "sdpa"] = "auto"
    """Which attention runs: `auto` picks the fastest on the device at load (GPU), ours on a CPU; or name one."""


def _sageattention(q, k, v):
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="HND", is_causal=False)


def _attention_shape(model) -> tuple[int, int, int, int]:
    """(batch, heads, tokens, head_dim) of the model's self-attention at its default size, CFG batch of 2."""
    from diffusers.models.attention_processor import Attention

    from ditserve.quantization.paths import default_tokens

    layer = next(m for g in model.adapter.block_groups(model.transformer) for m in g.blocks.modules()
                 if isinstance(m, Attention))  # fmt: skip
    return 2, layer.heads, default_tokens(model, batch=1), layer.to_q.out_features // layer.heads


@QUANTIZERS.register("sage")
class SageAttentionBackend(Quantizer):
    """8-bit attention (SageAttention-style int8 QKᵀ) in every transformer block, on the fastest path here."""

    Config = SageConfig

    def apply(self, model) -> None:
        import torch
        import torch.nn.functional as F

        from ditserve.quantization import paths
        from ditserve_kernels.sage_attention import sage_attention

        ours = functools.partial(
            sage_attention, pv_fp8=self.config.pv == "fp8", per_token=(self.config.scales == "token",) * 2
        )
        candidates = {"ours": ours, "sageattention": _sageattention, "sdpa": F.scaled_dot_product_attention}
        path, times = self.config.path, {}
        if path == "auto" and model.device.type == "cuda":
            batch, heads, tokens, head_dim = _attention_shape(model)
            q, k, v = (torch.randn(batch, heads, tokens, head_dim, device=model.device, dtype=model.dtype)
                       for _ in range(3))  # fmt: skip
            path, times = paths.fastest(self.name, {n: functools.partial(f, q, k, v) for n, f in candidates.items()})
        elif path == "auto":
            path = "ours"
        elif path == "sageattention" and model.device.type != "cuda":
            raise PlanError("quant.path: sageattention runs on a CUDA device only; use path: ours or auto")
        self.runs = paths.describe(path, times, "sdpa")
        attention.install(model, candidates[path], self.name)  # with `sdpa`: the model's own attention, same checks
