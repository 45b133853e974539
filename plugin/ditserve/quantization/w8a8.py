"""W8A8 dynamic quantization with SmoothQuant smoothing (Xiao et al., 2023).

Activations are quantized to int8 per token at run time, weights per output channel at load, and the
GEMM runs on int8 (`ditserve_kernels.w8a8_gemm`: Triton on a GPU, its torch reference elsewhere).
DiT activations have outlier channels that a per-token int8 scale cannot hold; SmoothQuant divides
each input channel by s_j = max|X_j|^α / max|W_j|^(1−α) (from calibration) and multiplies the weight's
column by it, which leaves the product unchanged and evens out the ranges.

On a CPU the reference GEMM dequantizes and multiplies in fp32: the fidelity is that of W8A8, the
speed is not (no int8 GEMM path is used on CPU). Why not torchao's int8 dynamic-activation config:
it is not a dependency here (see int8.py) and has no smoothing step.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ditserve.quantization.base import CalibratedQuantConfig, Quantizer
from ditserve.quantization.calibration import input_absmax, smoothing_factors
from ditserve.quantization.layers import block_linears, replace_module
from ditserve.registry import QUANTIZERS


class W8A8Config(CalibratedQuantConfig):
    name: Literal["w8a8"] = "w8a8"
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """SmoothQuant's migration strength: 0 leaves activations as they are, 1 moves all range to the weights."""


class W8A8Linear(nn.Module):
    """A linear layer running int8 × int8 with per-token activation and per-channel weight scales."""

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor) -> None:
        super().__init__()
        from ditserve_kernels.w8a8_gemm import quantize_per_channel

        w_q, w_scale = quantize_per_channel(linear.weight.detach().float() * smooth[None, :])
        self.register_buffer("inv_smooth", (1.0 / smooth).to(linear.weight.dtype))
        self.register_buffer("weight_q", w_q)
        self.register_buffer("weight_scale", w_scale)
        self.register_buffer("bias", linear.bias.detach().clone() if linear.bias is not None else None)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ditserve_kernels.w8a8_gemm import w8a8_linear

        return w8a8_linear(x * self.inv_smooth.to(x.dtype), self.weight_q, self.weight_scale, self.bias)


@QUANTIZERS.register("w8a8")
class W8A8(Quantizer):
    """W8A8 dynamic: int8 weights and per-token int8 activations after SmoothQuant smoothing (calibrated)."""

    Config = W8A8Config
    needs_calibration = True

    def calibrate(self, engine) -> dict[str, torch.Tensor]:
        cfg = self.config
        return input_absmax(engine, cfg.calibration_samples, cfg.calibration_steps)

    def apply(self, model) -> None:
        absmax = self.statistics(model)
        for name, linear in block_linears(model).items():
            smooth = smoothing_factors(absmax[name], linear.weight, self.config.alpha)
            replace_module(model.transformer, name, W8A8Linear(linear, smooth))
