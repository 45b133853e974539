"""8-bit attention in the manner of SageAttention (Zhang et al., 2024): int8 QKᵀ, fp16 PV.

1. Smooth K: subtract its mean over the sequence. Softmax is invariant to adding one constant per
   query row, and q·(k − k̄) = q·k − q·k̄ is exactly that, so the result is unchanged while K's
   channel-wise outliers (shared by all tokens) stop eating the int8 range.
2. Quantize Q and K to int8, symmetric, with one fp32 scale per token (the default: finer, in the
   spirit of SageAttention2's per-thread groups) or per tile of `block_m` / `block_n` tokens
   (SageAttention's per-block scheme), chosen for Q and K separately; the softmax scale is folded
   into Q's. On Gaussian Q, K (head dim 128, 1024 tokens) per-token scales for both cut the error
   against exact attention from 1.35e-2 to 0.93e-2 (one of the two per token: 1.12e-2), at the price
   of a second multiply per score (benchmarks/results/kernels-gpu.md has the cost on an H200).
3. S = int8 QKᵀ (exact int32), dequantized by the two block scales; online softmax (base 2);
   P is rounded to fp16 and multiplied by V in fp16 with fp32 accumulation — or, with `pv_fp8`
   (SageAttention2's option for Hopper/Ada, whose fp8 tensor cores run twice the fp16 rate), P is
   scaled by 448 (E4M3's largest value; P ≤ 1) and V is quantized per channel, both to fp8 E4M3.

The reference below computes exactly that quantized attention with a plain softmax; the fidelity of
the scheme itself (against exact attention) is measured by the tests and `benchmarks/kernels_gpu.py`.
The fp8 path needs a GPU of compute capability ≥ 8.9 (and runs under the interpreter for tests).
"""

from __future__ import annotations

import math

import torch

from ditserve_kernels._runtime import interpreting, triton_importable, triton_or_reference

OP_NAME = "ditserve_kernels::sage_attention_int8"
GPU_BLOCKS = (128, 64)
INTERPRETER_BLOCKS = (16, 16)


def default_blocks() -> tuple[int, int]:
    """(block_m, block_n): the kernel's tile, and the quantization block when scales are per block."""
    return INTERPRETER_BLOCKS if interpreting() else GPU_BLOCKS


def quantize_per_block(x: torch.Tensor, block: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, S, D) → int8 of the same shape and fp32 scales (B, H, ceil(S / block)): one per token block.

    `scale` multiplies the values first (the softmax scale, for Q)."""
    B, H, S, D = x.shape
    blocks = -(-S // block)
    padded = torch.zeros(B, H, blocks * block, D, device=x.device, dtype=torch.float32)
    padded[:, :, :S] = x.float() * scale
    tiles = padded.view(B, H, blocks, block, D)
    scales = tiles.abs().amax(dim=(-2, -1)).clamp(min=1e-8) / 127.0
    q = torch.round(tiles / scales[..., None, None]).clamp(-127, 127).to(torch.int8)
    return q.view(B, H, blocks * block, D)[:, :, :S].contiguous(), scales


FP8_MAX = 448.0
"""Largest finite float8 E4M3 value: P ∈ [0, 1] is scaled by it before rounding, to use the whole range."""


def quantize_v_fp8(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, S, D) → fp8 E4M3 V transposed to (B, H, D, S) and fp32 per-channel scales (B, H, D).

    Transposed because Hopper's fp8 tensor-core instruction wants the reduction dimension (the
    sequence, for PV) contiguous in both operands."""
    scale = v.float().abs().amax(dim=-2).clamp(min=1e-8) / FP8_MAX
    v8 = (v.float() / scale[..., None, :]).to(torch.float8_e4m3fn)
    return v8.transpose(-1, -2).contiguous(), scale


def quantize_qk(
    q: torch.Tensor, k: torch.Tensor, block_m: int, block_n: int, per_token: tuple[bool, bool] = (True, True)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth K, then int8 Q (softmax scale folded in) and K, each scaled per token or per tile
    (`per_token` = (for Q, for K))."""
    k = k - k.mean(dim=-2, keepdim=True)
    q_q, q_s = quantize_per_block(q, 1 if per_token[0] else block_m, 1.0 / math.sqrt(q.shape[-1]))
    k_q, k_s = quantize_per_block(k, 1 if per_token[1] else block_n)
    return q_q, q_s, k_q, k_s


def scale_group(scales: torch.Tensor, tokens: int, block: int) -> int:
    """Tokens per scale: 1 when there is one scale per token, else the tile `block`."""
    return 1 if scales.shape[-1] == tokens else block


def sage_attention_reference(
    q_q: torch.Tensor,
    q_s: torch.Tensor,
    k_q: torch.Tensor,
    k_s: torch.Tensor,
    v: torch.Tensor,
    block_m: int,
    block_n: int,
    out_dtype: torch.dtype,
    pv_fp8: bool = False,
) -> torch.Tensor:
    """The definition of the quantized attention: dequantized int8 scores, softmax in fp32, PV with fp16
    V (or, with `pv_fp8`, P·448 and per-channel V rounded to fp8 E4M3, the product rescaled)."""
    sq, sk = q_q.shape[-2], k_q.shape[-2]
    row_scale = q_s.repeat_interleave(scale_group(q_s, sq, block_m), dim=-1)[..., :sq]
    col_scale = k_s.repeat_interleave(scale_group(k_s, sk, block_n), dim=-1)[..., :sk]
    scores = (q_q.float() @ k_q.float().transpose(-1, -2)) * row_scale[..., :, None] * col_scale[..., None, :]
    p = scores.softmax(dim=-1)
    if not pv_fp8:
        return (p @ v.to(torch.float16).float()).to(out_dtype)
    v8, v_scale = quantize_v_fp8(v)
    p8 = (p * FP8_MAX).to(torch.float8_e4m3fn).float()
    return ((p8 @ v8.float().transpose(-1, -2)) * (v_scale[..., None, :] / FP8_MAX)).to(out_dtype)


if triton_importable():
    import triton
    import triton.language as tl

    from ditserve_kernels._tiles import load_rows, online_softmax_init, store_rows

    @triton.jit
    def _sage_kernel(
        q_ptr,  # int8 (B·H, Sq, D) contiguous, softmax scale folded into its block scales
        q_scale_ptr,  # fp32 (B·H, n_qs): one scale per Q_GROUP tokens
        k_ptr,  # int8 (B·H, Sk, D) contiguous, smoothed
        k_scale_ptr,  # fp32 (B·H, n_ks): one scale per K_GROUP tokens
        v_ptr,  # fp16 (B·H, Sk, D) contiguous, or with PV_FP8 fp8 E4M3 (B·H, D, Sk) contiguous
        v_scale_ptr,  # fp32 (B·H, D) per-channel V scales, read only with PV_FP8
        out_ptr,  # (B·H, Sq, D) contiguous output
        Sq,
        Sk,
        D,
        n_qs,
        n_ks,
        BLOCK_M: tl.constexpr,  # query tile = Q's quantization block
        BLOCK_N: tl.constexpr,  # key tile = K's quantization block
        BLOCK_D: tl.constexpr,  # head dim padded to a power of two ≥ 16 (tl.dot's minimum)
        PV_FP8: tl.constexpr,  # P·448 and V in fp8 E4M3 for the PV product
        Q_GROUP: tl.constexpr,  # tokens per Q scale: 1 (per token) or BLOCK_M (per tile)
        K_GROUP: tl.constexpr,  # tokens per K scale: 1 or BLOCK_N
        EVEN: tl.constexpr,  # Sk a multiple of BLOCK_N and D == BLOCK_D: K/V tiles need no masks
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        q = load_rows(q_ptr + bh * Sq * D, offs_m, offs_d, Sq, D)
        # The row's scale (Q's, times K's when K has one per tile, times log2 e for exp2) is applied inside the
        # exponent, one fused multiply-add per score, and to the row maximum (scales are positive, so
        # max(x·s) = s·max(x)); per-token K scales cost one more multiply per score.
        if Q_GROUP == 1:  # rows past Sq get scale 1, not 0: 0 · -inf would be NaN
            q_s = tl.load(q_scale_ptr + bh * n_qs + offs_m, mask=offs_m < Sq, other=1.0)
        else:
            q_s = tl.load(q_scale_ptr + bh * n_qs + pid_m) + tl.zeros([BLOCK_M], dtype=tl.float32)
        q_s = q_s * 1.4426950408889634
        m_i, l_i, acc = online_softmax_init(BLOCK_M, BLOCK_D)
        for start in range(0, Sk, BLOCK_N):
            kn = start + offs_n
            k_ptrs = k_ptr + bh * Sk * D + kn[None, :] * D + offs_d[:, None]
            k = tl.load(k_ptrs) if EVEN else tl.load(k_ptrs, mask=(kn[None, :] < Sk) & (offs_d[:, None] < D), other=0)
            x = tl.dot(q, k, out_dtype=tl.int32).to(tl.float32)
            if K_GROUP == 1:
                x = x * tl.load(k_scale_ptr + bh * n_ks + kn, mask=kn < Sk, other=0.0)[None, :]
                row_scale = q_s
            else:
                row_scale = q_s * tl.load(k_scale_ptr + bh * n_ks + start // BLOCK_N)
            if not EVEN:
                x = tl.where(kn[None, :] < Sk, x, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(x, axis=1) * row_scale)
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(x * row_scale[:, None] - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if PV_FP8:
                v_ptrs = v_ptr + bh * D * Sk + offs_d[None, :] * Sk + kn[:, None]
            else:
                v_ptrs = v_ptr + bh * Sk * D + kn[:, None] * D + offs_d[None, :]
            v = tl.load(v_ptrs) if EVEN else tl.load(v_ptrs, mask=(kn[:, None] < Sk) & (offs_d[None, :] < D), other=0.0)
            pv = tl.dot((p * 448.0).to(tl.float8e4nv), v) if PV_FP8 else tl.dot(p.to(tl.float16), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        out = acc / l_i[:, None]
        if PV_FP8:
            v_scale = tl.load(v_scale_ptr + bh * D + offs_d, mask=offs_d < D, other=0.0)
            out = out * (v_scale[None, :] / 448.0)
        store_rows(out_ptr + bh * Sq * D, offs_m, offs_d, Sq, D, out)


def sage_attention_triton(
    q_q: torch.Tensor,
    q_s: torch.Tensor,
    k_q: torch.Tensor,
    k_s: torch.Tensor,
    v: torch.Tensor,
    block_m: int,
    block_n: int,
    out_dtype: torch.dtype,
    out: torch.Tensor | None = None,
    pv_fp8: bool = False,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Launch one program per (query block, batch·head); `out` (B, H, Sq, D), if given, is written in place.
    `num_warps` / `num_stages` override the launch defaults (the GPU benchmark sweeps them)."""
    B, H, Sq, D = q_q.shape
    Sk = k_q.shape[-2]
    q_q, k_q = q_q.contiguous(), k_q.contiguous()
    if pv_fp8:
        v_in, v_scale = quantize_v_fp8(v)
    else:
        v_in, v_scale = v.to(torch.float16).contiguous(), q_s  # the scale pointer is unused without PV_FP8
    q_s, k_s = q_s.float().contiguous(), k_s.float().contiguous()
    if out is None:
        out = torch.empty((B, H, Sq, D), device=q_q.device, dtype=out_dtype)
    block_d = max(16, triton.next_power_of_2(D))
    grid = (triton.cdiv(Sq, block_m), B * H)
    # 4 warps, 4 stages: the fastest launch for the default 128×64 tile on an H200 (benchmarks/results/kernels-gpu.md)
    launch = {"num_warps": num_warps or 4, "num_stages": num_stages or 4}
    _sage_kernel[grid](
        q_q, q_s, k_q, k_s, v_in, v_scale.float().contiguous(), out, Sq, Sk, D, q_s.shape[-1], k_s.shape[-1],
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PV_FP8=pv_fp8,
        Q_GROUP=scale_group(q_s, Sq, block_m), K_GROUP=scale_group(k_s, Sk, block_n),
        EVEN=Sk % block_n == 0 and block_d == D, **launch,
    )  # fmt: skip
    return out


def _sage_attention_int8_fake(q_q, q_s, k_q, k_s, v, block_m, block_n, out_dtype, pv_fp8=False):
    return q_q.new_empty(q_q.shape, dtype=out_dtype)


sage_attention_int8 = triton_or_reference(
    OP_NAME, sage_attention_reference, sage_attention_triton, _sage_attention_int8_fake
)
"""Attention over pre-quantized Q and K: Triton where it can run, the reference elsewhere."""


def sage_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pv_fp8: bool = False,
    per_token: tuple[bool, bool] = (True, True),
) -> torch.Tensor:
    """Drop-in for `F.scaled_dot_product_attention(q, k, v)` (no mask, no dropout): (B, H, S, D) → (B, H, Sq, D)."""
    block_m, block_n = default_blocks()
    q_q, q_s, k_q, k_s = quantize_qk(q, k, block_m, block_n, per_token)
    return sage_attention_int8(q_q, q_s, k_q, k_s, v, block_m, block_n, q.dtype, pv_fp8)
