"""Rounding a weight matrix to a block-scaled grid so that the layer's output, not the weight, stays close.

Round-to-nearest (RTN) minimizes each weight's own error. What matters is the layer's output on real
inputs: for a weight change ΔW, the squared output error over calibration inputs X is tr(ΔW H ΔWᵀ) with
H = E[x xᵀ] (`calibration.InputSecondMoment`). GPTQ (Frantar et al., 2023; Optimal Brain Quantization)
rounds one input column at a time and spreads each column's rounding error over the columns not yet
rounded, along the inverse Hessian, so that later roundings cancel it. Block scales are chosen when the
loop enters a block, on the weights as updated so far, each block's scale among the quantizer's
candidates minimizing the diag(H)-weighted error of that block.

A `BlockQuantizer` says how one block is scaled and how a column is rounded; the float formats (lbq.py)
and the integer grids of the mixed-precision schemes use the same loop.
"""

from __future__ import annotations

from typing import Protocol

import torch


class BlockQuantizer(Protocol):
    """Rounds values to a grid scaled per block of `block` consecutive inputs of a row."""

    block: int

    def scales(self, weights: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
        """Stored scales (rows,) of one block (rows, block) whose inputs have these diag(H) `importance`s."""

    def effective(self, stored: torch.Tensor) -> torch.Tensor:
        """fp32 multipliers (…) of stored scales (…)."""

    def round(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """`values` (rows, k) rounded onto the grid scaled by `scale` (rows, 1), in the values' units."""


class IntBlock:
    """A `BlockQuantizer` onto symmetric signed integers of `bits` (±(2^(bits−1) − 1)), one fp16 scale per `block`
    inputs of a row; each block's scale is its absmax over the top level, times a clip ratio chosen per block."""

    CLIPS = (1.0, 0.95, 0.9, 0.85, 0.8)

    def __init__(self, bits: int, block: int) -> None:
        self.levels, self.block = 2 ** (bits - 1) - 1, block

    def scales(self, weights: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
        absmax = weights.abs().amax(dim=1).float().clamp(min=1e-8)
        candidates = [(absmax * clip / self.levels).half().float() for clip in self.CLIPS]
        choice = best_scale(weights, importance, candidates, self)
        return torch.stack(candidates)[choice, torch.arange(weights.shape[0])]

    def effective(self, stored: torch.Tensor) -> torch.Tensor:
        return stored

    def round(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.round(values / scale).clamp(-self.levels, self.levels) * scale


def best_scale(weights: torch.Tensor, importance: torch.Tensor, candidates: list[torch.Tensor], quantizer) -> int:
    """Index per row (rows,) of the stored-scale candidate with the least diag(H)-weighted rounding error."""
    errors = []
    for stored in candidates:
        scale = quantizer.effective(stored)[:, None]
        errors.append((((quantizer.round(weights, scale) - weights) ** 2) * importance[None, :]).sum(dim=1))
    return torch.stack(errors).argmin(dim=0)


def round_to_nearest(weight: torch.Tensor, quantizer: BlockQuantizer) -> tuple[torch.Tensor, torch.Tensor]:
    """RTN: the rounded weight (rows, cols) and the stored scales (rows, cols / block), unit importance."""
    rows, cols = weight.shape
    w, block = weight.float(), quantizer.block
    result, stored = torch.empty_like(w), []
    for start in range(0, cols, block):
        part = w[:, start : start + block]
        stored.append(quantizer.scales(part, torch.ones(block)))
        result[:, start : start + block] = quantizer.round(part, quantizer.effective(stored[-1])[:, None])
    return result, torch.stack(stored, dim=1)


def gptq(
    weight: torch.Tensor, hessian: torch.Tensor, quantizer: BlockQuantizer, damping: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ rounding of `weight` (rows, cols) under input second moment `hessian` (cols, cols): the rounded
    weight and the stored scales (rows, cols / block). `damping`·mean(diag H) is added to the diagonal (the
    paper's 1%) so that H inverts when some inputs are (nearly) always zero."""
    w = weight.detach().float().clone()
    rows, cols = w.shape
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damping * torch.diag(h).mean() * torch.eye(cols, dtype=h.dtype)
    importance = torch.diag(h).float()
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    result, stored = torch.empty_like(w), []
    block = quantizer.block
    for column in range(cols):
        if column % block == 0:
            stored.append(quantizer.scales(w[:, column : column + block], importance[column : column + block]))
            scale = quantizer.effective(stored[-1])[:, None]
        rounded = quantizer.round(w[:, column : column + 1], scale)[:, 0]
        result[:, column] = rounded
        error = (w[:, column] - rounded) / inverse[column, column]
        w[:, column + 1 :] -= error[:, None] * inverse[column, column + 1 :][None, :]
    return result, torch.stack(stored, dim=1)


def output_error(weight: torch.Tensor, rounded: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ): the relative squared output error of the rounding on calibration inputs."""
    delta = (rounded - weight.float()).double()
    w, h = weight.double(), hessian.double()
    return float(torch.einsum("ij,jk,ik->", delta, h, delta) / torch.einsum("ij,jk,ik->", w, h, w).clamp(min=1e-30))
