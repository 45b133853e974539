"""Vector-quantized weight GEMM, as VQ4DiT stores weights (Deng et al., 2024):

    y[m, n] = Σ_k x[m, k] · codebook[code(n, k // DIM), k % DIM] · scale[n, k // GROUP]  +  bias[n]

Each row of the weight is cut into sub-vectors of DIM consecutive inputs; each sub-vector is the codebook
entry its code names. Codes of BITS bits (2^BITS entries) are packed per row as a little-endian bit
stream (`pack_bits`): code j of a row starts at bit j·BITS, so with BITS ≤ 8 it lies within two bytes.
Every GROUP consecutive inputs of a row share one scale (GROUP = K: one per row). The kernel gathers the
codebook entries and their scales inside its K loop: the dequantized weight is never written out.
"""

from __future__ import annotations

import math

import torch

from ditserve_kernels._runtime import (
    GEMM_INTERPRETER_TILE,
    GEMM_TILES,
    autotune_configs,
    triton_importable,
    triton_or_reference,
)

OP_NAME = "ditserve_kernels::vq_gemm"


def packed_bytes(codes_per_row: int, bits: int) -> int:
    """Bytes of one row of `codes_per_row` codes of `bits` bits."""
    return math.ceil(codes_per_row * bits / 8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(rows, n) codes < 2^bits (1 ≤ bits ≤ 8) → uint8 (rows, ⌈n·bits/8⌉), each row a little-endian bit stream."""
    if not 1 <= bits <= 8:
        raise ValueError(f"codes of {bits} bits cannot be packed; 1 to 8")
    rows, n = codes.shape
    weights = 2 ** torch.arange(bits)
    stream = ((codes.long()[..., None] // weights) % 2).reshape(rows, n * bits)  # bit b of code j at j·bits + b
    stream = torch.nn.functional.pad(stream, (0, 8 * packed_bytes(n, bits) - n * bits))
    return (stream.reshape(rows, -1, 8) * 2 ** torch.arange(8)).sum(dim=-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the (rows, n) codes as int64."""
    start = torch.arange(n, device=packed.device) * bits
    low = packed[:, start // 8].long()
    high = packed[:, (start // 8 + 1).clamp(max=packed.shape[1] - 1)].long()
    high = torch.where((start // 8 + 1 < packed.shape[1])[None, :], high, 0)
    return ((low | (high << 8)) >> (start % 8)) & (2**bits - 1)


def dequantize(codes: torch.Tensor, codebook: torch.Tensor, scale: torch.Tensor, bits: int, k: int):
    """The fp32 weight (N, K) that packed `codes`, `codebook` (2^bits, DIM) and `scale` (N, K / GROUP) stand for."""
    dim = codebook.shape[1]
    entries = codebook.float()[unpack_bits(codes, bits, k // dim)]  # (N, K / DIM, DIM)
    return entries.reshape(codes.shape[0], k) * scale.float().repeat_interleave(k // scale.shape[1], dim=1)


def vq_gemm_reference(
    x: torch.Tensor,
    codes: torch.Tensor,
    codebook: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The definition, in fp32: the weight decoded from its codes, then the product."""
    y = x.float() @ dequantize(codes, codebook, scale, bits, x.shape[1]).T
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


if triton_importable():
    import triton
    import triton.language as tl

    from ditserve_kernels._tiles import grouped_tile

    @triton.autotune(
        configs=autotune_configs(
            [tile | {"BLOCK_K": 64} for tile in GEMM_TILES], GEMM_INTERPRETER_TILE | {"BLOCK_K": 16}
        ),
        key=["M", "N", "K", "BITS", "DIM"],
    )
    @triton.jit
    def _vq_gemm_kernel(
        x_ptr,  # (M, K) activations, contiguous
        codes_ptr,  # uint8 (N, ROW_BYTES) packed codes, one bit stream per output row
        codebook_ptr,  # (2^BITS, DIM) codebook entries, contiguous
        scale_ptr,  # (N, K / GROUP) scales, contiguous
        bias_ptr,  # (N,) read only when HAS_BIAS
        out_ptr,  # (M, N) output
        M,
        N,
        K,
        ROW_BYTES,
        GROUP,  # inputs per scale (a multiple of DIM)
        HAS_BIAS: tl.constexpr,
        BITS: tl.constexpr,  # bits per code, 1..8: a code spans at most two bytes
        DIM: tl.constexpr,  # inputs per sub-vector (a power of two that divides BLOCK_K)
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,  # output tiles grouped along M for L2 reuse of weight tiles
    ):
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            x = tl.load(
                x_ptr + offs_m[:, None] * K + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0
            )
            # the (BLOCK_K, BLOCK_N) weight tile, transposed: code of sub-vector k // DIM of row n, entry k % DIM
            start = (offs_k // DIM) * BITS
            byte = start // 8
            row = codes_ptr + offs_n[None, :] * ROW_BYTES
            keep = mask_k[:, None] & mask_n[None, :]
            low = tl.load(row + byte[:, None], mask=keep, other=0).to(tl.int32)
            high = tl.load(row + byte[:, None] + 1, mask=keep & (byte[:, None] + 1 < ROW_BYTES), other=0).to(tl.int32)
            code = ((low | (high << 8)) >> (start % 8)[:, None]) & ((1 << BITS) - 1)
            w = tl.load(codebook_ptr + code * DIM + (offs_k % DIM)[:, None], mask=keep, other=0.0).to(tl.float32)
            w *= tl.load(scale_ptr + offs_n[None, :] * (K // GROUP) + (offs_k // GROUP)[:, None], mask=keep, other=0.0)
            acc = tl.dot(x, w.to(x.dtype), acc)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(
            out_ptr + offs_m[:, None] * N + offs_n[None, :],
            acc.to(out_ptr.dtype.element_ty),
            mask=mask_m[:, None] & mask_n[None, :],
        )


def vq_gemm_triton(
    x: torch.Tensor,
    codes: torch.Tensor,
    codebook: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    out_dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the kernel; `out` (M, N) contiguous, if given, is written in place."""
    (M, K), N, dim = x.shape, codes.shape[0], codebook.shape[1]
    if K % dim or 16 % dim or codes.shape[1] != packed_bytes(K // dim, bits) or K % scale.shape[1]:
        raise ValueError(f"vq_gemm: K={K} must be a multiple of the sub-vector length {dim} (≤ 16, a power of two)")
    group = K // scale.shape[1]
    if out is None:
        out = torch.empty((M, N), device=x.device, dtype=out_dtype)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _vq_gemm_kernel[grid](
        x.contiguous(), codes.contiguous(), codebook.contiguous(), scale.contiguous(),
        bias if bias is not None else scale, out, M, N, K, codes.shape[1], group,
        HAS_BIAS=bias is not None, BITS=bits, DIM=dim,
    )  # fmt: skip
    return out


def _vq_gemm_fake(x, codes, codebook, scale, bias, bits, out_dtype):
    return x.new_empty((x.shape[0], codes.shape[0]), dtype=out_dtype)


vq_gemm = triton_or_reference(OP_NAME, vq_gemm_reference, vq_gemm_triton, _vq_gemm_fake)
"""Vector-quantized-weight GEMM: Triton where it can run, the reference elsewhere."""
