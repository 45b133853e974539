"""W8A8 GEMM: int8 activations with per-token dynamic scales × int8 weights with per-channel scales.

    y[m, n] = (Σ_k a_q[m, k] · w_q[n, k]) · a_scale[m] · w_scale[n] + bias[n]

The integer product is exact (int32 accumulation); the scales are applied once per output element,
in fp32. Activations are quantized on the fly (`quantize_per_token`), weights once at load
(`quantize_per_channel`); both are symmetric, in [-127, 127] (SmoothQuant's W8A8 layout).
"""

from __future__ import annotations

import torch

from ditserve_kernels._runtime import (
    GEMM_INTERPRETER_TILE,
    GEMM_TILES,
    autotune_configs,
    triton_importable,
    triton_or_reference,
)

OP_NAME = "ditserve_kernels::w8a8_gemm"


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `x` (M, K) → int8 rows and their fp32 scales (M,), symmetric absmax/127."""
    scale = x.float().abs().amax(dim=-1).clamp(min=1e-8) / 127.0
    q = torch.round(x.float() / scale[..., None]).clamp(-127, 127).to(torch.int8)
    return q, scale


quantize_per_channel = quantize_per_token
"""Weights (N, K) are quantized per output channel, i.e. per row: the same rule as activations."""


def w8a8_gemm_reference(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The definition: dequantized matrix product in fp32 (integer products are exact in fp32 for K < 1040)."""
    y = (a_q.float() @ w_q.float().T) * a_scale.float()[:, None] * w_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


if triton_importable():
    import triton
    import triton.language as tl

    from ditserve_kernels._tiles import grouped_tile

    @triton.autotune(
        configs=autotune_configs(
            [tile | {"BLOCK_K": 128} for tile in GEMM_TILES], GEMM_INTERPRETER_TILE | {"BLOCK_K": 32}
        ),
        key=["M", "N", "K"],
    )
    @triton.jit
    def _w8a8_kernel(
        a_ptr,  # int8 (M, K) quantized activations
        a_scale_ptr,  # fp32 (M,) per-token scales
        w_ptr,  # int8 (N, K) quantized weights
        w_scale_ptr,  # fp32 (N,) per-output-channel scales
        bias_ptr,  # (N,) bias, read only when HAS_BIAS
        out_ptr,  # (M, N) output in the caller's dtype
        M,
        N,
        K,
        stride_am,
        stride_ak,
        stride_wn,
        stride_wk,
        stride_om,
        stride_on,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,  # output tiles grouped along M so neighbouring programs share weight tiles in L2
    ):
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            a = tl.load(
                a_ptr + offs_m[:, None] * stride_am + kk[None, :] * stride_ak,
                mask=(offs_m[:, None] < M) & (kk[None, :] < K),
                other=0,
            )
            w = tl.load(
                w_ptr + kk[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                mask=(kk[:, None] < K) & (offs_n[None, :] < N),
                other=0,
            )
            acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        a_s = tl.load(a_scale_ptr + offs_m, mask=offs_m < M, other=0.0)
        w_s = tl.load(w_scale_ptr + offs_n, mask=offs_n < N, other=0.0)
        y = acc.to(tl.float32) * a_s[:, None] * w_s[None, :]
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        tl.store(
            out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
            y.to(out_ptr.dtype.element_ty),
            mask=(offs_m[:, None] < M) & (offs_n[None, :] < N),
        )


def w8a8_gemm_triton(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the Triton kernel; `out` (M, N), if given, is written in place (tests poison it first)."""
    M, K = a_q.shape
    N = w_q.shape[0]
    if w_q.shape[1] != K:
        raise ValueError(f"w8a8_gemm: weight has K={w_q.shape[1]}, activations K={K}")
    if out is None:
        out = torch.empty((M, N), device=a_q.device, dtype=out_dtype)
    a_scale, w_scale = a_scale.float().contiguous(), w_scale.float().contiguous()

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _w8a8_kernel[grid](
        a_q, a_scale, w_q, w_scale, bias if bias is not None else a_scale, out, M, N, K,
        a_q.stride(0), a_q.stride(1), w_q.stride(0), w_q.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None,
    )  # fmt: skip
    return out


def _w8a8_gemm_fake(a_q, a_scale, w_q, w_scale, bias, out_dtype):
    return a_q.new_empty((a_q.shape[0], w_q.shape[0]), dtype=out_dtype)


w8a8_gemm = triton_or_reference(OP_NAME, w8a8_gemm_reference, w8a8_gemm_triton, _w8a8_gemm_fake)
"""int8 × int8 → `out_dtype` GEMM: Triton where it can run, the reference elsewhere."""


def w8a8_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` for an int8 weight: quantize `x` (..., K) per token, run the GEMM, keep `x`'s dtype and shape."""
    a_q, a_scale = quantize_per_token(x.reshape(-1, x.shape[-1]))
    y = w8a8_gemm(a_q, a_scale, w_q, w_scale, bias, x.dtype)
    return y.reshape(*x.shape[:-1], w_q.shape[0])
