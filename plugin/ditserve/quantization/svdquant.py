"""SVDQuant W4A4 (Li et al., 2024): smoothing, a low-rank branch in 16 bits, a 4-bit residual.

Per linear layer, from calibration:
1. smooth: x̂ = x / s, Ŵ = W·diag(s) (SmoothQuant's s with strength α) moves activation outliers
   into the weight;
2. absorb: the top-`rank` singular directions of Ŵ become a 16-bit branch L₁L₂ (Ŵ ≈ L₂ᵀL₁ᵀ + R),
   taking the weight outliers that smoothing created;
3. quantize the residual R and the activations x̂ to int4, one scale per `group` values.
y = W4A4(x̂, R) + (x̂·L₁)·L₂ + b runs as one fused kernel (`ditserve_kernels.w4a4_gemm`: Triton on a
GPU, its torch reference on a CPU, where the numbers are W4A4's and the speed is not).
Layers whose input width is not a multiple of `group` stay in float (named in the log).

Paths (`path`): `kernel` is the fused kernel above. `dequantized` unpacks the stored int4 residual and the
int4 activations to the activation dtype group by group and multiplies them with cuBLAS — the same products
as the kernel's definition up to the 16-bit rounding of each dequantized operand — for cards where int4
arithmetic has no tensor-core instruction (Hopper: the kernel unpacks to int8 and runs at 0.2x cuBLAS bf16,
kernels-gpu.md). Weights stay stored in 4 bits either way, so the memory saving is the same. `auto` times both
on one of the model's layers at load on a GPU (the log and `describe()` say which runs, against plain bf16);
on a CPU it runs the kernel's torch reference.
The low-rank factors are stored in fp16; with `scope: transformer`, so is every other fp32 parameter
(embedding tables, the patch convolution), as the paper keeps what it does not quantize in 16 bits.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ditserve.quantization.base import CalibratedQuantConfig, Quantizer, Scope
from ditserve.quantization.calibration import input_absmax, smoothing_factors
from ditserve.quantization.layers import replace_module, scoped_linears, store_fp32_parameters_in_fp16
from ditserve.registry import QUANTIZERS

log = logging.getLogger(__name__)


class SVDQuantConfig(CalibratedQuantConfig):
    name: Literal["svdquant"] = "svdquant"
    rank: int = Field(8, ge=1, le=512)
    """Rank of the 16-bit low-rank branch (the paper uses 32 on 3072-wide layers; small models want less,
    since the branch costs rank·(in + out)·16 bits per layer)."""
    group: int = Field(64, ge=32, le=1024)
    """int4 group size along the input dimension (one fp16 scale per group); a power of two ≥ 32."""
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """Smoothing strength, as in SmoothQuant."""
    scope: Scope = "blocks"
    """The blocks' linears (the paper's choice), or every linear of the transformer, the remaining fp32 parameters
    stored in fp16 (smaller, less faithful)."""
    path: Literal["auto", "kernel", "dequantized"] = "auto"
    """The fused W4A4 kernel, or cuBLAS on the dequantized operands; `auto`: the faster on the GPU at load."""


class SVDQuantLinear(nn.Module):
    """A linear layer as 4-bit residual × 4-bit activations plus a 16-bit low-rank branch."""

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor, rank: int, group: int) -> None:
        super().__init__()
        from ditserve_kernels.w4a4_gemm import pack_int4, quantize_int4

        weight = linear.weight.detach().float() * smooth[None, :]
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        rank = min(rank, s.numel())
        lora_down = vh[:rank].T  # (K, R)
        lora_up = (u[:, :rank] * s[:rank]).T  # (R, N)
        residual = weight - lora_up.T @ lora_down.T
        r_q, r_scale = quantize_int4(residual, group)
        self.group = group
        self.register_buffer("inv_smooth", (1.0 / smooth).half())
        self.register_buffer("weight_packed", pack_int4(r_q, group))
        self.register_buffer("weight_scale", r_scale.half())
        self.register_buffer("lora_down", lora_down.half())
        self.register_buffer("lora_up", lora_up.half())
        self.register_buffer("bias", linear.bias.detach().half() if linear.bias is not None else None)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dequantized = False
        """True: cuBLAS on the dequantized operands instead of the fused kernel (set by `SVDQuant.apply`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ditserve_kernels.w4a4_gemm import pack_int4, quantize_int4, unpack_int4, w4a4_gemm

        flat = x.reshape(-1, x.shape[-1]) * self.inv_smooth.to(x.dtype)
        a_q, a_scale = quantize_int4(flat, self.group)
        lora_act = flat @ self.lora_down.to(x.dtype)
        if self.dequantized:
            a = a_q.to(x.dtype) * a_scale.to(x.dtype).repeat_interleave(self.group, dim=1)
            w = unpack_int4(self.weight_packed, self.group).to(x.dtype)
            w = w * self.weight_scale.to(x.dtype).repeat_interleave(self.group, dim=1)
            y = torch.addmm(lora_act @ self.lora_up.to(x.dtype), a, w.T)
            y = y + self.bias.to(x.dtype) if self.bias is not None else y
            return y.reshape(*x.shape[:-1], self.out_features)
        y = w4a4_gemm(
            pack_int4(a_q, self.group), a_scale, self.weight_packed, self.weight_scale.float(),
            lora_act, self.lora_up.to(x.dtype), self.bias.to(x.dtype) if self.bias is not None else None,
            self.group, x.dtype,
        )  # fmt: skip
        return y.reshape(*x.shape[:-1], self.out_features)


@QUANTIZERS.register("svdquant")
class SVDQuant(Quantizer):
    """SVDQuant W4A4: smoothing + a 16-bit low-rank branch + int4 residual weights and int4 activations."""

    Config = SVDQuantConfig
    needs_calibration = True

    def calibrate(self, engine) -> dict[str, torch.Tensor]:
        cfg = self.config
        return input_absmax(engine, cfg.calibration_samples, cfg.calibration_steps, cfg.scope)

    def apply(self, model) -> None:
        cfg = self.config
        absmax = self.statistics(model)
        layers: list[SVDQuantLinear] = []
        largest = None  # (original, quantized) of the widest layer: where `auto` times the paths
        for name, linear in scoped_linears(model, cfg.scope).items():
            if linear.in_features % cfg.group:
                log.warning("svdquant: %s stays in float: in_features %d is not a multiple of group %d",
                            name, linear.in_features, cfg.group)  # fmt: skip
                continue
            smooth = smoothing_factors(absmax[name], linear.weight, cfg.alpha)
            layers.append(SVDQuantLinear(linear, smooth, cfg.rank, cfg.group))
            if largest is None or linear.weight.numel() > largest[0].weight.numel():
                largest = (linear, layers[-1])
            replace_module(model.transformer, name, layers[-1])
        if cfg.scope == "transformer":
            store_fp32_parameters_in_fp16(model.transformer)
        self.runs = self._choose_path(model, layers, largest)

    def _choose_path(self, model, layers: list[SVDQuantLinear], largest: tuple | None) -> str:
        """Set every layer's path: the config's, or with `auto` on a GPU the faster of the two on the widest layer
        (timed beside the unquantized layer, whose time `describe()` reports as the baseline)."""
        from ditserve.quantization import paths

        path, times = self.config.path, {}
        if path == "auto" and model.device.type == "cuda" and largest is not None:
            original, layer = largest
            x = torch.randn(paths.default_tokens(model), layer.in_features, device=model.device, dtype=model.dtype)

            def run(dequantized: bool):
                layer.dequantized = dequantized
                return layer(x)

            candidates = {"kernel": lambda: run(False), "dequantized": lambda: run(True)}
            path, times = paths.fastest(self.name, candidates)
            times["bf16 (unquantized)"] = paths.time_ms(lambda: original(x))
        elif path == "auto":
            path = "kernel"
        for layer in layers:
            layer.dequantized = path == "dequantized"
        return paths.describe(path, times, "bf16 (unquantized)")
