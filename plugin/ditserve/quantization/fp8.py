"""FP8 (E4M3) weights and activations: per-channel weight scales, per-token dynamic activation scales.

On a GPU with fp8 tensor cores (compute capability ≥ 8.9: Ada, Hopper) the GEMM is
`torch._scaled_mm` (cuBLASLt) on float8_e4m3fn operands with row-wise scales: one per token of the
activations, one per output channel of the weight. Everywhere else — every CPU, older GPUs, and layers whose
widths are not multiples of 16, which the fp8 GEMM does not take — no fp8 matmul runs, so the layer is
*simulated*: both operands are rounded through float8_e4m3fn and multiplied in the activation dtype. The
fidelity figures are then those of real FP8; the speed and activation memory are not. Weights are stored in
fp8 in both cases (1 byte each). The load log and `describe()` say which path runs. The activation
quantization is a few elementwise kernels in eager mode; `compile: regional` fuses them into one.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ditserve.quantization.base import QuantConfig, Quantizer
from ditserve.quantization.layers import block_linears, replace_module
from ditserve.registry import QUANTIZERS

log = logging.getLogger(__name__)

E4M3_MAX = 448.0


def to_e4m3(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (along `dim`) scaled into E4M3's range and cast; returns the fp8 tensor and fp32 scales."""
    # |x| and its maximum are exact in x's dtype; the division promotes to fp32 (one pass, no fp32 copy of x)
    scale = x.abs().amax(dim=dim, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


def has_fp8_matmul(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class FP8Config(QuantConfig):
    name: Literal["fp8"] = "fp8"


class FP8Linear(nn.Module):
    """A linear layer with an E4M3 weight (per-channel scale) and E4M3 activations (per-token scale)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight_q, scale = to_e4m3(linear.weight.detach(), dim=1)
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", scale)  # (N, 1) fp32
        self.register_buffer("bias", linear.bias.detach().clone() if linear.bias is not None else None)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        widths_fit = linear.in_features % 16 == 0 and linear.out_features % 16 == 0
        self.tensor_cores = has_fp8_matmul(linear.weight.device) and widths_fit  # decided once, not per call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        x_q, x_scale = to_e4m3(flat, dim=1)
        if self.tensor_cores:
            y = torch._scaled_mm(
                x_q,
                self.weight_q.t(),
                scale_a=x_scale,
                scale_b=self.weight_scale.view(1, -1),
                bias=None,
                out_dtype=x.dtype,
            )
            y = y + self.bias.to(x.dtype) if self.bias is not None else y
        else:  # simulated: real fp8 rounding of both operands, float GEMM
            weight = (self.weight_q.float() * self.weight_scale).to(x.dtype)
            y = F.linear((x_q.float() * x_scale).to(x.dtype), weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


@QUANTIZERS.register("fp8")
class FP8(Quantizer):
    """FP8 E4M3 weights and activations (real fp8 GEMM on compute capability ≥ 8.9, simulated elsewhere)."""

    Config = FP8Config

    def apply(self, model) -> None:
        fast = total = 0
        for name, linear in block_linears(model).items():
            layer = FP8Linear(linear)
            replace_module(model.transformer, name, layer)
            fast, total = fast + layer.tensor_cores, total + 1
        self.runs = (
            f"torch._scaled_mm on fp8 tensor cores in {fast} of {total} layers, the rest simulated"
            if fast
            else "simulated (this device has no fp8 matmul): fp8 fidelity, no speedup"
        )
        log.info("fp8: %s", self.runs)
