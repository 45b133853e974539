"""Mixed-precision weights under a bit budget, chosen per layer from a calibrated sensitivity
(in the spirit of ViDiT-Q's and MixDQ's metric-based bit allocation).

Sensitivity of a layer: the relative error of the whole transformer's output when that layer alone
is quantized to 4 bits, on inputs recorded from real calibration sampling runs. Allocation: every
layer starts at 4 bits; layers are promoted to 8 bits in order of sensitivity per extra bit spent,
while the parameter-weighted mean stays within `avg_bits`. Weights are weight-only int4 (group-wise,
packed two per byte) or int8 (per channel); activations stay in the model dtype.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ditserve.calibrate import record
from ditserve.quantization.base import CalibratedQuantConfig, Quantizer
from ditserve.quantization.calibration import TransformerInputs, probe_outputs, spread
from ditserve.quantization.int8 import Int8WeightLinear
from ditserve.quantization.layers import block_linears, replace_module
from ditserve.registry import QUANTIZERS

log = logging.getLogger(__name__)


class MixedConfig(CalibratedQuantConfig):
    name: Literal["mixed"] = "mixed"
    avg_bits: float = Field(6.0, ge=4.0, le=8.0)
    """Budget: the parameter-weighted mean weight bit width (4 = all int4, 8 = all int8)."""
    group: int = Field(64, ge=32, le=1024)
    """Group size of the int4 layers (one fp16 scale per group)."""
    probe_inputs: int = Field(6, ge=1, le=64)
    """Recorded transformer calls (spread over the sampling steps) that sensitivities are measured on."""


class Int4WeightLinear(nn.Module):
    """A linear layer whose weight is packed int4 with one fp16 scale per group of inputs."""

    def __init__(self, linear: nn.Linear, group: int) -> None:
        super().__init__()
        from ditserve_kernels.w4a4_gemm import pack_int4, quantize_int4

        q, scale = quantize_int4(linear.weight.detach(), group)
        self.group = group
        self.register_buffer("weight_packed", pack_int4(q, group))
        self.register_buffer("scale", scale.half())
        self.register_buffer("bias", linear.bias.detach().half() if linear.bias is not None else None)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ditserve_kernels.w4a4_gemm import unpack_int4

        weight = unpack_int4(self.weight_packed, self.group).to(x.dtype)
        weight = weight * self.scale.to(x.dtype).repeat_interleave(self.group, dim=1)
        return F.linear(x, weight, self.bias.to(x.dtype) if self.bias is not None else None)


@QUANTIZERS.register("mixed")
class MixedPrecision(Quantizer):
    """Mixed int4/int8 weights per layer, chosen from calibrated sensitivity under an average-bit budget."""

    Config = MixedConfig
    needs_calibration = True

    def calibrate(self, engine) -> dict[str, torch.Tensor]:
        """Per-layer sensitivity (relative output error with that layer at int4), keyed by layer name."""
        cfg = self.config
        recorder = TransformerInputs()
        record(engine, recorder, cfg.calibration_samples, cfg.calibration_steps)
        probes = spread(recorder.calls, cfg.probe_inputs)
        model = engine.model
        reference = probe_outputs(model, probes)
        sensitivity = {}
        for name, linear in block_linears(model).items():
            if linear.in_features % cfg.group:
                continue
            replace_module(model.transformer, name, Int4WeightLinear(linear, cfg.group))
            outputs = probe_outputs(model, probes)
            errors = [(out - ref).norm() / ref.norm() for out, ref in zip(outputs, reference, strict=True)]
            replace_module(model.transformer, name, linear)
            sensitivity[name] = torch.stack(errors).mean().reshape(1)
        return sensitivity

    def allocate(self, model, sensitivity: dict[str, torch.Tensor]) -> dict[str, int]:
        """Bits per layer: all 4, then the most sensitive per parameter promoted to 8 within the budget."""
        linears = block_linears(model)
        bits = {name: 4 if name in sensitivity else 8 for name in linears}
        sizes = {name: linear.weight.numel() for name, linear in linears.items()}
        total = sum(sizes.values())
        spent = sum(bits[n] * sizes[n] for n in linears)
        for name in sorted(sensitivity, key=lambda n: sensitivity[n].item() / sizes[n], reverse=True):
            if spent + 4 * sizes[name] <= self.config.avg_bits * total:
                bits[name] = 8
                spent += 4 * sizes[name]
        return bits

    def apply(self, model) -> None:
        sensitivity = self.statistics(model)
        bits = self.allocate(model, sensitivity)
        for name, linear in block_linears(model).items():
            new = Int8WeightLinear(linear) if bits[name] == 8 else Int4WeightLinear(linear, self.config.group)
            replace_module(model.transformer, name, new)
        log.info("mixed precision: %d layers at int8, %d at int4", sum(b == 8 for b in bits.values()),
                 sum(b == 4 for b in bits.values()))  # fmt: skip
