"""W4A4 GEMM with a fused low-rank branch, in the manner of SVDQuant (Li et al., 2024):

    y = Σ_g (a_g · w_gᵀ) · a_scale[:, g] · w_scale[:, g]  +  lora_act · lora_up  +  bias

Activations and weights are symmetric int4 in [-7, 7] with one scale per `group` consecutive values
along K (per token for activations, per output channel for weights). The low-rank branch absorbs the
outliers that 4 bits cannot hold: `lora_act = x̂ · lora_down` (M, R) is computed by the caller, and its
product with `lora_up` (R, N) is added inside the GEMM, so the output is written once.

Packing (`pack_int4`): within each group of G values, byte j holds value j in its low nibble and value
j + G/2 in its high nibble. The kernel then needs no interleaving: it unpacks the two halves with two
shifts and runs two int8 dots per group.
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

OP_NAME = "ditserve_kernels::w4a4_gemm"


def quantize_int4(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) → int8 values in [-7, 7] (M, K) and fp32 scales (M, K / group), symmetric absmax / 7."""
    M, K = x.shape
    if K % group:
        raise ValueError(f"int4 group size {group} must divide K={K}")
    tiles = x.float().reshape(M, K // group, group)
    scale = tiles.abs().amax(dim=-1).clamp(min=1e-8) / 7.0
    q = torch.round(tiles / scale[..., None]).clamp(-7, 7).to(torch.int8)
    return q.reshape(M, K), scale


def pack_int4(q: torch.Tensor, group: int) -> torch.Tensor:
    """int8 (M, K) values in [-8, 7] → packed bytes (M, K / 2), the half-group layout described above."""
    M, K = q.shape
    halves = q.reshape(M, K // group, 2, group // 2)
    low, high = halves[:, :, 0].to(torch.int16), halves[:, :, 1].to(torch.int16)
    packed = (low & 0xF) | ((high & 0xF) << 4)
    return packed.to(torch.uint8).view(torch.int8).reshape(M, K // 2)


def unpack_int4(packed: torch.Tensor, group: int) -> torch.Tensor:
    """Inverse of `pack_int4`: (M, K / 2) bytes → int8 (M, K), sign-extended."""
    M, half_k = packed.shape
    tiles = packed.reshape(M, 2 * half_k // group, group // 2)
    low = torch.bitwise_right_shift(torch.bitwise_left_shift(tiles, 4), 4)
    high = torch.bitwise_right_shift(tiles, 4)
    return torch.stack([low, high], dim=2).reshape(M, 2 * half_k)


def w4a4_gemm_reference(
    a_packed: torch.Tensor,
    a_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    lora_act: torch.Tensor,
    lora_up: torch.Tensor,
    bias: torch.Tensor | None,
    group: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The definition, in fp32: dequantize both operands group by group, multiply, add the low-rank product."""
    a = unpack_int4(a_packed, group).float() * a_scale.float().repeat_interleave(group, dim=1)
    w = unpack_int4(w_packed, group).float() * w_scale.float().repeat_interleave(group, dim=1)
    y = a @ w.T + lora_act.float() @ lora_up.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


if triton_importable():
    import triton
    import triton.language as tl

    from ditserve_kernels._tiles import grouped_tile

    @triton.autotune(
        configs=autotune_configs(GEMM_TILES, GEMM_INTERPRETER_TILE),
        key=["M", "N", "K", "R"],
    )
    @triton.jit
    def _w4a4_kernel(
        a_ptr,  # int8 (M, K/2) packed int4 activations
        a_scale_ptr,  # fp32 (M, K/G) activation group scales
        w_ptr,  # int8 (N, K/2) packed int4 weights
        w_scale_ptr,  # fp32 (N, K/G) weight group scales
        la_ptr,  # (M, R) low-rank activations x̂·lora_down
        lu_ptr,  # (R, N) low-rank up-projection
        bias_ptr,  # (N,) read only when HAS_BIAS
        out_ptr,  # (M, N) output
        M,
        N,
        K,
        R,
        HAS_BIAS: tl.constexpr,
        GROUP: tl.constexpr,  # int4 group size G along K (≥ 32 so each half-group dot has K ≥ 16)
        BLOCK_R: tl.constexpr,  # rank padded to a power of two ≥ 16
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        GROUP_M: tl.constexpr,  # output tiles grouped along M for L2 reuse of weight tiles
    ):
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

        HALF: tl.constexpr = GROUP // 2
        half_k = K // 2
        n_groups = K // GROUP
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_h = tl.arange(0, HALF)
        mask_m = offs_m < M
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for g in range(0, n_groups):
            a = tl.load(a_ptr + offs_m[:, None] * half_k + g * HALF + offs_h[None, :], mask=mask_m[:, None], other=0)
            w = tl.load(w_ptr + offs_n[None, :] * half_k + g * HALF + offs_h[:, None], mask=mask_n[None, :], other=0)
            a_lo = (a << 4).to(tl.int8) >> 4
            w_lo = (w << 4).to(tl.int8) >> 4
            part = tl.dot(a_lo, w_lo, out_dtype=tl.int32)
            part = tl.dot(a >> 4, w >> 4, part, out_dtype=tl.int32)
            a_s = tl.load(a_scale_ptr + offs_m * n_groups + g, mask=mask_m, other=0.0)
            w_s = tl.load(w_scale_ptr + offs_n * n_groups + g, mask=mask_n, other=0.0)
            acc += part.to(tl.float32) * a_s[:, None] * w_s[None, :]
        offs_r = tl.arange(0, BLOCK_R)
        la = tl.load(
            la_ptr + offs_m[:, None] * R + offs_r[None, :], mask=mask_m[:, None] & (offs_r[None, :] < R), other=0.0
        )
        lu = tl.load(
            lu_ptr + offs_r[:, None] * N + offs_n[None, :], mask=(offs_r[:, None] < R) & mask_n[None, :], other=0.0
        )
        acc += tl.dot(la, lu).to(tl.float32)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(
            out_ptr + offs_m[:, None] * N + offs_n[None, :],
            acc.to(out_ptr.dtype.element_ty),
            mask=mask_m[:, None] & mask_n[None, :],
        )


def w4a4_gemm_triton(
    a_packed: torch.Tensor,
    a_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    lora_act: torch.Tensor,
    lora_up: torch.Tensor,
    bias: torch.Tensor | None,
    group: int,
    out_dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the fused kernel; `out` (M, N) contiguous, if given, is written in place."""
    M, N, K, R = a_packed.shape[0], w_packed.shape[0], 2 * a_packed.shape[1], lora_act.shape[1]
    if group < 32 or K % group:
        raise ValueError(f"w4a4_gemm: group must be ≥ 32 and divide K={K} (got {group})")
    if out is None:
        out = torch.empty((M, N), device=a_packed.device, dtype=out_dtype)
    lora_up = lora_up.to(lora_act.dtype).contiguous()

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _w4a4_kernel[grid](
        a_packed.contiguous(), a_scale.float().contiguous(), w_packed.contiguous(), w_scale.float().contiguous(),
        lora_act.contiguous(), lora_up, bias if bias is not None else lora_up, out, M, N, K, R,
        HAS_BIAS=bias is not None, GROUP=group, BLOCK_R=max(16, triton.next_power_of_2(R)),
    )  # fmt: skip
    return out


def _w4a4_gemm_fake(a_packed, a_scale, w_packed, w_scale, lora_act, lora_up, bias, group, out_dtype):
    return a_packed.new_empty((a_packed.shape[0], w_packed.shape[0]), dtype=out_dtype)


w4a4_gemm = triton_or_reference(OP_NAME, w4a4_gemm_reference, w4a4_gemm_triton, _w4a4_gemm_fake)
"""Packed-int4 GEMM plus low-rank branch: Triton where it can run, the reference elsewhere."""
