"""Fused LayerNorm + adaLN modulation, the commonest elementwise hot spot of a DiT block:

    y[b, s, :] = LayerNorm(x[b, s, :]) · (1 + scale[b, :]) + shift[b, :]

(no affine weights: DiT's adaLN norms have `elementwise_affine=False`). Unfused, torch reads and writes
the activation three times; the kernel reads it once and writes it once, with statistics in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ditserve_kernels._runtime import triton_importable, triton_or_reference

OP_NAME = "ditserve_kernels::adaln_layernorm"


def adaln_layernorm_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """The definition, in fp32: x (B, S, D), shift and scale (B, D)."""
    normed = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return (normed * (1 + scale.float()[:, None, :]) + shift.float()[:, None, :]).to(x.dtype)


if triton_importable():
    import triton
    import triton.language as tl

    @triton.jit
    def _adaln_kernel(
        x_ptr,  # (B, S, D) input, rows contiguous
        shift_ptr,  # (B, D) modulation shift
        scale_ptr,  # (B, D) modulation scale (applied as 1 + scale)
        out_ptr,  # (B, S, D) output, same layout as x
        S,  # tokens per sample: row r belongs to sample r // S
        D,  # features per row
        stride_xrow,
        stride_mod,  # row stride of shift/scale
        stride_orow,
        eps,
        BLOCK_D: tl.constexpr,  # next power of two ≥ D: one program normalizes one whole row
    ):
        row = tl.program_id(0)
        b = row // S
        offs = tl.arange(0, BLOCK_D)
        mask = offs < D
        x = tl.load(x_ptr + row * stride_xrow + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / D
        centered = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / D + eps)
        shift = tl.load(shift_ptr + b * stride_mod + offs, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + b * stride_mod + offs, mask=mask, other=0.0).to(tl.float32)
        y = centered * rstd * (1.0 + scale) + shift
        tl.store(out_ptr + row * stride_orow + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def adaln_layernorm_triton(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Launch one program per token row; `out`, if given, is written in place."""
    B, S, D = x.shape
    if shift.shape != (B, D) or scale.shape != (B, D):
        raise ValueError(f"adaln_layernorm: shift/scale must be (B, D) = ({B}, {D}), got {shift.shape}, {scale.shape}")
    x = x.contiguous()
    shift, scale = shift.contiguous(), scale.contiguous()
    if out is None:
        out = torch.empty_like(x)
    block_d = triton.next_power_of_2(D)
    _adaln_kernel[(B * S,)](
        x, shift, scale, out, S, D, x.stride(1), shift.stride(0), out.stride(1), eps,
        BLOCK_D=block_d, num_warps=min(16, max(1, block_d // 256)),
    )  # fmt: skip
    return out


def _adaln_layernorm_fake(x, shift, scale, eps):
    return torch.empty_like(x)


adaln_layernorm = triton_or_reference(OP_NAME, adaln_layernorm_reference, adaln_layernorm_triton, _adaln_layernorm_fake)
"""LayerNorm(x)·(1 + scale) + shift: Triton where it can run, the reference elsewhere."""
