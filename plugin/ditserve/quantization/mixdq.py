"""Activation-aware mixed precision (MixDQ, Zhao et al., 2024; ViDiT-Q, Zhao et al., 2024): per-layer weight
and activation bit widths — W8A8, W4A8, W8A4 or W4A4 — under two bit budgets, from sensitivities measured
separately for content and for quality, on channel-balanced layers.

Per linear layer of the blocks, from one calibration run (real sampling trajectories, guidance on):
1. channel balancing (ViDiT-Q's static part; SmoothQuant's rule, calibration.smoothing_factors): input
   channel j is divided by s_j and the weight's column multiplied by it, so per-token activation scales
   are not set by a few outlier channels;
2. sensitivity, metric-decoupled as MixDQ measures it: the layer alone at 4-bit weights (W4A8), then alone
   at 4-bit activations (W8A4), the transformer's output on recorded calls compared with the unquantized
   output in two parts — content (the 2×2-pooled output: layout, shape) and quality (what pooling removes:
   edges, texture). Each part is normalized by its sum over layers, so neither metric's scale decides;
3. allocation: every layer starts at W4A4; layers are promoted to 8-bit weights in order of weight
   sensitivity per parameter while the parameter-weighted mean stays within `weight_bits`, and likewise
   to 8-bit activations within `activation_bits`;
4. weights are rounded with GPTQ (adaptive_rounding.py) along the balanced input Hessian: int4 with one
   fp16 scale per `group` inputs, packed two per byte, or int8 with one per output channel.
Activations are quantized per token at run time (int8: one scale per token; int4: one per `group` inputs of a
token) and the GEMM is simulated (dequantized operands, float GEMM): the fidelity is the scheme's, the speed
on a CPU is not. MixDQ also keeps the text encoder's first (BOS) token out of quantization, because its
outlier magnitude ruins a static per-tensor activation scale; the per-token dynamic scales here give that
token its own scale, so it costs the other tokens nothing and needs no special case.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ditserve.calibrate import record
from ditserve.errors import PlanError
from ditserve.quantization.adaptive_rounding import IntBlock, gptq
from ditserve.quantization.base import CalibratedQuantConfig, Quantizer
from ditserve.quantization.calibration import (
    InputAbsmax,
    InputSecondMoment,
    Together,
    TransformerInputs,
    probe_outputs,
    smoothing_factors,
    spread,
    thinned,
)
from ditserve.quantization.layers import block_linears, replace_module
from ditserve.registry import QUANTIZERS

log = logging.getLogger(__name__)


class MixDQConfig(CalibratedQuantConfig):
    name: Literal["mixdq"] = "mixdq"
    weight_bits: float = Field(4.5, ge=4.0, le=8.0)
    """Budget: the parameter-weighted mean weight width, each layer 4 or 8 bits (4: every layer W4)."""
    activation_bits: float = Field(8.0, ge=4.0, le=8.0)
    """Budget: the parameter-weighted (so compute-weighted) mean activation width, each layer 4 or 8 bits."""
    group: int = Field(64, ge=16, le=1024)
    """Inputs per fp16 scale of the int4 weights and of the int4 activations; a power of two."""
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """Channel-balancing strength, as in SmoothQuant (0: none)."""
    probe_inputs: int = Field(4, ge=1, le=64)
    """Recorded transformer calls (spread over the sampling steps) that sensitivities are measured on."""
    probe_rows: int = Field(4, ge=1, le=256)
    """Images of each probed call's batch kept (evenly spaced; the cost of measuring 2 sensitivities per layer)."""
    calibration_samples: int = Field(8, ge=1, le=256)
    """Images sampled for the statistics (input Hessians, channel ranges, the probe calls)."""


def quantize_activations(x: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """`x` (…, K) rounded per token: int8 with one scale per token, or int4 with one per `group` inputs."""
    flat = x.reshape(-1, x.shape[-1]).float()
    levels, width = (127, flat.shape[1]) if bits == 8 else (7, group)
    tiles = flat.reshape(flat.shape[0], -1, width)
    scale = tiles.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / levels
    return (torch.round(tiles / scale).clamp(-levels, levels) * scale).reshape(x.shape).to(x.dtype)


class BalancedLinear(nn.Module):
    """A channel-balanced linear layer with int4 or int8 weights and per-token int4 or int8 activations."""

    def __init__(
        self, linear: nn.Linear, smooth: torch.Tensor, hessian: torch.Tensor, weight_bits: int, act_bits: int, group
    ) -> None:
        super().__init__()
        from ditserve_kernels.w4a4_gemm import pack_int4

        self.weight_bits, self.act_bits, self.group = weight_bits, act_bits, group
        self.in_features, self.out_features = linear.in_features, linear.out_features
        block = group if weight_bits == 4 else linear.in_features
        balanced_hessian = hessian / smooth[:, None] / smooth[None, :]
        rounded, scale = gptq(
            linear.weight.detach().float() * smooth[None, :], balanced_hessian, IntBlock(weight_bits, block)
        )
        q = torch.round(rounded / scale.repeat_interleave(block, dim=1)).to(torch.int8)
        self.register_buffer("inv_smooth", (1.0 / smooth).half())
        self.register_buffer("weight_q", pack_int4(q, group) if weight_bits == 4 else q)
        self.register_buffer("weight_scale", scale.half())
        self.register_buffer("bias", linear.bias.detach().half() if linear.bias is not None else None)

    def dequantized_weight(self) -> torch.Tensor:
        from ditserve_kernels.w4a4_gemm import unpack_int4

        q = unpack_int4(self.weight_q, self.group) if self.weight_bits == 4 else self.weight_q
        block = self.group if self.weight_bits == 4 else self.in_features
        return q.float() * self.weight_scale.float().repeat_interleave(block, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        balanced = quantize_activations(x * self.inv_smooth.to(x.dtype), self.act_bits, self.group)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(balanced, self.dequantized_weight().to(x.dtype), bias)


def content_and_quality(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An output (B, C, H, W) split into its 2×2-pooled content and the detail that pooling removes."""
    content = F.avg_pool2d(output, 2)
    return content, output - F.interpolate(content, scale_factor=2, mode="nearest")


def decoupled_errors(outputs: list[torch.Tensor], references: list[torch.Tensor]) -> torch.Tensor:
    """[content error, quality error]: relative errors of each part of the outputs, summed over the probes."""
    errors = torch.zeros(2, dtype=torch.float64)
    for out, ref in zip(outputs, references, strict=True):
        for k, (part, ref_part) in enumerate(zip(content_and_quality(out), content_and_quality(ref), strict=True)):
            errors[k] += float((part - ref_part).norm() / ref_part.norm().clamp(min=1e-12))
    return errors


def promote(sizes: dict[str, int], score: dict[str, float], budget: float) -> dict[str, int]:
    """Bits per layer: 4 for all, then 8 for the highest `score` per parameter while the mean stays ≤ `budget`."""
    bits = dict.fromkeys(sizes, 4)
    total, spent = sum(sizes.values()), 4 * sum(sizes.values())
    for name in sorted(score, key=lambda n: score[n] / sizes[n], reverse=True):
        if spent + 4 * sizes[name] <= budget * total:
            bits[name], spent = 8, spent + 4 * sizes[name]
    return bits


@QUANTIZERS.register("mixdq")
class MixDQ(Quantizer):
    """Activation-aware mixed precision: per-layer W4/W8 × A4/A8 under bit budgets, from decoupled sensitivities."""

    Config = MixDQConfig
    needs_calibration = True

    def calibrate(self, engine) -> dict[str, torch.Tensor]:
        """Per layer: input absmax, input Hessian, and [W4 content, W4 quality, A4 content, A4 quality] errors."""
        cfg = self.config
        calls, absmax, moments = TransformerInputs(), InputAbsmax(), InputSecondMoment()
        record(engine, Together(calls, absmax, moments), cfg.calibration_samples, cfg.calibration_steps)
        hessians, model = moments.moments(), engine.model
        probes = [thinned(call, cfg.probe_rows) for call in spread(calls.calls, cfg.probe_inputs)]
        reference = probe_outputs(model, probes)
        statistics = {}
        for name, linear in block_linears(model).items():
            smooth = smoothing_factors(absmax.absmax[name], linear.weight, cfg.alpha)
            errors = []
            for weight_bits, act_bits in ((4, 8), (8, 4)):
                layer = BalancedLinear(linear, smooth, hessians[name], weight_bits, act_bits, cfg.group)
                replace_module(model.transformer, name, layer)
                errors.append(decoupled_errors(probe_outputs(model, probes), reference))
                replace_module(model.transformer, name, linear)
            statistics |= {f"{name}.absmax": absmax.absmax[name], f"{name}.hessian": hessians[name]}
            statistics[f"{name}.sensitivity"] = torch.cat(errors).float()
        return statistics

    def allocate(self, model, statistics: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
        """(weight bits, activation bits) per layer under the two budgets, from the decoupled sensitivities."""
        linears = block_linears(model)
        sizes = {name: linear.weight.numel() for name, linear in linears.items()}
        sensitivity = torch.stack([statistics[f"{name}.sensitivity"] for name in linears]).double()
        normalized = sensitivity / sensitivity.sum(dim=0).clamp(min=1e-30)  # each metric sums to 1 over layers
        weight_score = dict(zip(linears, (normalized[:, 0] + normalized[:, 1]).tolist(), strict=True))
        act_score = dict(zip(linears, (normalized[:, 2] + normalized[:, 3]).tolist(), strict=True))
        weights = promote(sizes, weight_score, self.config.weight_bits)
        activations = promote(sizes, act_score, self.config.activation_bits)
        return {name: (weights[name], activations[name]) for name in linears}

    def apply(self, model) -> None:
        cfg = self.config
        linears = block_linears(model)
        for name, linear in linears.items():  # before calibrating: a refusal should not cost a calibration run
            if linear.in_features % cfg.group:
                raise PlanError(
                    f"quant mixdq: layer {name} has {linear.in_features} inputs, not a multiple of group "
                    f"{cfg.group}; set group to a power of two that divides every block layer's input width"
                )
        statistics = self.statistics(model)
        widths = self.allocate(model, statistics)
        for name, linear in linears.items():
            smooth = smoothing_factors(statistics[f"{name}.absmax"], linear.weight, cfg.alpha)
            layer = BalancedLinear(linear, smooth, statistics[f"{name}.hessian"], *widths[name], cfg.group)
            replace_module(model.transformer, name, layer)
        counts = Counter(f"W{w}A{a}" for w, a in widths.values())
        self.runs = "simulated " + ", ".join(f"{kind} in {n} layers" for kind, n in sorted(counts.items()))
        log.info("mixdq: %s", self.runs)
