"""LBQ: low-bit floating-point weights — fp4 (E2M1) and fp6 (E3M2, E2M3) with MX or NV block scales, a
per-layer format search and Hessian-aware rounding, all on calibration data.

After "Low-bitwidth floating point quantization for efficient high-quality diffusion models" (Chen et al.,
2024), which finds that low-bit floats hold DiT/U-Net weights better than integers of the same width when
the format (exponent/mantissa split) is searched per layer and the rounding is learned on calibration data.
Here, per linear layer of the blocks:
1. calibration records H = E[x xᵀ] of the layer's inputs over real sampling runs (every step, guidance on);
2. each candidate element format of the configured width (`fp4`: E2M1 and the uniform E1M2; `fp6`: E3M2 and
   E2M3; or one named format) is rounded with GPTQ along H (adaptive_rounding.py), block scales chosen per
   block from the convention's candidates; the format with the least output error tr(ΔW H ΔWᵀ) is kept;
3. the codes are stored packed (lowbit_formats.py) with the block scales: `mx` is 4.25 (fp4) or 6.25 (fp6)
   bits per weight, `nv` 4.5 or 6.5 plus one fp32 per layer.
Activations stay in the model dtype: the GEMM is simulated — the layer decodes its packed weight to the
activation dtype on every call and runs the float GEMM (no fp4/fp6 matmul exists on a CPU, and the H200's
Hopper tensor cores have none either). The fidelity is that of the stored weights; the bytes are real.
A layer whose input width is not a multiple of the convention's block is refused at load, naming it.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ditserve.errors import PlanError
from ditserve.quantization.adaptive_rounding import best_scale, gptq, output_error, round_to_nearest
from ditserve.quantization.base import CalibratedQuantConfig, Quantizer, Scope
from ditserve.quantization.calibration import input_second_moments
from ditserve.quantization.layers import replace_module, scoped_linears, store_fp32_parameters_in_fp16
from ditserve.quantization.lowbit_formats import (
    BLOCK,
    FORMATS,
    Convention,
    FloatFormat,
    mx_scale_exponents,
    nv_block_scales,
    nv_tensor_scale,
    pack_codes,
    unpack_codes,
)
from ditserve.registry import QUANTIZERS

log = logging.getLogger(__name__)

SEARCHED = {"fp4": ("e2m1", "e1m2"), "fp6": ("e3m2", "e2m3")}
"""The element formats a width's per-layer search compares."""
NV_CLIPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
"""Clip ratios an `nv` block scale is chosen among (its scale is free; MX's is a power of two)."""
MX_SHIFTS = (0, 1)
"""Exponent shifts an `mx` block scale is chosen among: the spec's (clamps the block's top values) or the next."""


class LBQConfig(CalibratedQuantConfig):
    name: Literal["lbq"] = "lbq"
    calibration_samples: int = Field(16, ge=1, le=256)
    """Images sampled to record each layer's input Hessian (GPTQ over-fits the calibration inputs of fewer)."""
    format: Literal["fp4", "fp6", "e2m1", "e1m2", "e3m2", "e2m3"] = "fp4"
    """`fp4` / `fp6`: per layer, the 4-bit (E2M1, E1M2) or 6-bit (E3M2, E2M3) format with the least output error
    on calibration data; or one named format for every layer."""
    convention: Convention = "nv"
    """Block scales: `nv` (16 weights per E4M3 scale, one fp32 per layer) or `mx` (32 per power-of-two E8M0)."""
    rounding: Literal["gptq", "nearest"] = "gptq"
    """`gptq`: each input column's rounding error spread over the columns after it along the calibrated input
    Hessian (the layer's output error, not the weight's, is minimized); `nearest`: round to nearest."""
    damping: float = Field(0.01, gt=0.0, le=1.0)
    """GPTQ's damping: this fraction of the Hessian's mean diagonal is added to its diagonal."""
    scope: Scope = "blocks"
    """The blocks' linears, or every linear of the transformer (the other fp32 parameters then stored in fp16)."""


class BlockFloat:
    """A `BlockQuantizer` (adaptive_rounding.py) for element format `fmt` under block convention `convention`."""

    def __init__(self, fmt: FloatFormat, convention: Convention, weight: torch.Tensor) -> None:
        self.fmt, self.convention, self.block = fmt, convention, BLOCK[convention]
        self.tensor_scale = nv_tensor_scale(weight, fmt) if convention == "nv" else torch.ones(1)

    def candidates(self, weights: torch.Tensor) -> list[torch.Tensor]:
        absmax = weights.abs().amax(dim=1).float()
        if self.convention == "mx":
            return [mx_scale_exponents(absmax, self.fmt, shift).float() for shift in MX_SHIFTS]
        return [nv_block_scales(absmax, self.fmt, self.tensor_scale, clip).float() for clip in NV_CLIPS]

    def scales(self, weights: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
        candidates = self.candidates(weights)
        choice = best_scale(weights, importance, candidates, self)
        return torch.stack(candidates)[choice, torch.arange(weights.shape[0])]

    def effective(self, stored: torch.Tensor) -> torch.Tensor:
        return torch.exp2(stored) if self.convention == "mx" else stored * self.tensor_scale

    def round(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.fmt.round(values / scale) * scale

    def storage(self, stored: torch.Tensor) -> torch.Tensor:
        """The stored scales as their one-byte format: E8M0 (biased exponent, uint8) or E4M3."""
        if self.convention == "mx":
            return (stored + 127).to(torch.uint8)
        return stored.to(torch.float8_e4m3fn)


class LowBitFloatLinear(nn.Module):
    """A linear layer whose weight is stored as packed fp4/fp6 codes with one-byte block scales."""

    def __init__(self, linear: nn.Linear, rounded: torch.Tensor, stored: torch.Tensor, quantizer: BlockFloat) -> None:
        super().__init__()
        self.format, self.convention, self.block = quantizer.fmt.name, quantizer.convention, quantizer.block
        scale = quantizer.effective(stored).repeat_interleave(self.block, dim=1)
        codes = quantizer.fmt.encode(rounded / scale)
        self.register_buffer("weight_codes", pack_codes(codes, quantizer.fmt.bits))
        self.register_buffer("block_scale", quantizer.storage(stored))
        self.register_buffer("tensor_scale", quantizer.tensor_scale.float() if self.convention == "nv" else None)
        self.register_buffer("bias", linear.bias.detach().half() if linear.bias is not None else None)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def dequantized_weight(self) -> torch.Tensor:
        """The weight as fp32: codes decoded, times their block's scale."""
        fmt = FORMATS[self.format]
        values = fmt.decode(unpack_codes(self.weight_codes, fmt.bits, self.in_features))
        if self.convention == "mx":
            scale = torch.exp2(self.block_scale.float() - 127)
        else:
            scale = self.block_scale.float() * self.tensor_scale
        return values * scale.repeat_interleave(self.block, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantized_weight().to(x.dtype), bias)


def quantize_layer(
    linear: nn.Linear, hessian: torch.Tensor, candidates: tuple[str, ...], config: LBQConfig
) -> tuple[LowBitFloatLinear, float]:
    """The layer in whichever candidate format gives the least output error on calibration data, and that error."""
    best = None
    for name in candidates:
        quantizer = BlockFloat(FORMATS[name], config.convention, linear.weight.detach())
        if config.rounding == "gptq":
            rounded, stored = gptq(linear.weight, hessian, quantizer, config.damping)
        else:
            rounded, stored = round_to_nearest(linear.weight, quantizer)
        error = output_error(linear.weight, rounded, hessian)
        if best is None or error < best[0]:
            best = (error, rounded, stored, quantizer)
    error, rounded, stored, quantizer = best
    return LowBitFloatLinear(linear, rounded, stored, quantizer), error


@QUANTIZERS.register("lbq")
class LBQ(Quantizer):
    """LBQ low-bit float weights (fp4 E2M1 / fp6 E3M2, E2M3; MX or NV block scales), format searched per layer."""

    Config = LBQConfig
    needs_calibration = True

    def calibrate(self, engine) -> dict[str, torch.Tensor]:
        cfg = self.config
        return input_second_moments(engine, cfg.calibration_samples, cfg.calibration_steps, cfg.scope)

    def apply(self, model) -> None:
        cfg = self.config
        linears = scoped_linears(model, cfg.scope)
        block = BLOCK[cfg.convention]
        for name, linear in linears.items():  # before calibrating: a refusal should not cost a calibration run
            if linear.in_features % block:
                other = "; or convention: nv (blocks of 16)" if cfg.convention == "mx" else ""
                raise PlanError(
                    f"quant lbq: layer {name} has {linear.in_features} inputs, not a multiple of the "
                    f"{cfg.convention} block of {block}; use scope: blocks if it lies outside them{other}, or "
                    "another quantizer for this model"
                )
        hessians = self.statistics(model)
        candidates = SEARCHED.get(cfg.format, (cfg.format,))
        chosen, errors = Counter(), []
        for name, linear in linears.items():
            layer, error = quantize_layer(linear, hessians[name], candidates, cfg)
            replace_module(model.transformer, name, layer)
            chosen[layer.format] += 1
            errors.append(error)
        if cfg.scope == "transformer":
            store_fp32_parameters_in_fp16(model.transformer)
        formats = ", ".join(f"{fmt} in {n} layers" for fmt, n in chosen.most_common())
        self.runs = (
            f"simulated {cfg.convention} {cfg.format} weights ({formats}; mean relative output error "
            f"{sum(errors) / len(errors):.2e} on calibration data), decoded to the activation dtype per call"
        )
        log.info("lbq: %s", self.runs)
