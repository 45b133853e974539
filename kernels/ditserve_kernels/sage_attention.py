"""8-bit attention in the manner of SageAttention (Zhang et al., 2024): int8 QKᵀ, fp16 PV.

1. Smooth K: subtract its mean over the sequence. Softmax is invariant to adding one constant per
   query row, and q·(k − k̄) = q·k − q·k̄ is exactly that, so the result is unchanged while K's
   channel-wise outliers (shared by all tokens) stop eating the int8 range.
2. Quantize Q per block of `block_m` tokens and K per block of `block_n` tokens to int8 (symmetric,
   one fp32 scale per block; the softmax scale is folded into Q's).
3. S = int8 QKᵀ (exact int32), dequantized by the two block scales; online softmax (base 2);
   P is rounded to fp16 and multiplied by V in fp16 with fp32 accumulation.

The reference below computes exactly that quantized attention with a plain softmax; the fidelity of
the scheme itself (against exact attention) is measured by the tests and `benchmarks/kernels_gpu.py`.
Not done: SageAttention2's fp8 PV on Hopper (the kernel keeps PV in fp16 on every card).
"""

from __future__ import annotations

import math

import torch

from ditserve_kernels._runtime import interpreting, triton_importable, use_triton

OP_NAME = "ditserve_kernels::sage_attention_int8"
GPU_BLOCKS = (128, 64)
INTERPRETER_BLOCKS = (16, 16)


def default_blocks() -> tuple[int, int]:
    """(block_m, block_n): the quantization granularity is the kernel's tile, so both are chosen together."""
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


def quantize_qk(
    q: torch.Tensor, k: torch.Tensor, block_m: int, block_n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth K, then per-block int8 Q (softmax scale folded in) and K."""
    k = k - k.mean(dim=-2, keepdim=True)
    q_q, q_s = quantize_per_block(q, block_m, 1.0 / math.sqrt(q.shape[-1]))
    k_q, k_s = quantize_per_block(k, block_n)
    return q_q, q_s, k_q, k_s


def sage_attention_reference(
    q_q: torch.Tensor,
    q_s: torch.Tensor,
    k_q: torch.Tensor,
    k_s: torch.Tensor,
    v: torch.Tensor,
    block_m: int,
    block_n: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The definition of the quantized attention: dequantized int8 scores, softmax in fp32, PV with fp16 V."""
    sq, sk = q_q.shape[-2], k_q.shape[-2]
    row_scale = q_s.repeat_interleave(block_m, dim=-1)[..., :sq]
    col_scale = k_s.repeat_interleave(block_n, dim=-1)[..., :sk]
    scores = (q_q.float() @ k_q.float().transpose(-1, -2)) * row_scale[..., :, None] * col_scale[..., None, :]
    return (scores.softmax(dim=-1) @ v.to(torch.float16).float()).to(out_dtype)


if triton_importable():
    import triton
    import triton.language as tl

    @triton.jit
    def _sage_kernel(
        q_ptr,  # int8 (B·H, Sq, D) contiguous, softmax scale folded into its block scales
        q_scale_ptr,  # fp32 (B·H, n_qblk)
        k_ptr,  # int8 (B·H, Sk, D) contiguous, smoothed
        k_scale_ptr,  # fp32 (B·H, n_kblk)
        v_ptr,  # fp16 (B·H, Sk, D) contiguous
        out_ptr,  # (B·H, Sq, D) contiguous output
        Sq,
        Sk,
        D,
        n_qblk,
        n_kblk,
        BLOCK_M: tl.constexpr,  # query tile = Q's quantization block
        BLOCK_N: tl.constexpr,  # key tile = K's quantization block
        BLOCK_D: tl.constexpr,  # head dim padded to a power of two ≥ 16 (tl.dot's minimum)
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        q = tl.load(
            q_ptr + bh * Sq * D + offs_m[:, None] * D + offs_d[None, :],
            mask=(offs_m[:, None] < Sq) & (offs_d[None, :] < D),
            other=0,
        )
        q_s = tl.load(q_scale_ptr + bh * n_qblk + pid_m) * 1.4426950408889634  # log2(e): softmax via exp2
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for start in range(0, Sk, BLOCK_N):
            kn = start + offs_n
            k = tl.load(
                k_ptr + bh * Sk * D + kn[None, :] * D + offs_d[:, None],
                mask=(kn[None, :] < Sk) & (offs_d[:, None] < D),
                other=0,
            )
            k_s = tl.load(k_scale_ptr + bh * n_kblk + start // BLOCK_N)
            s = tl.dot(q, k, out_dtype=tl.int32).to(tl.float32) * (q_s * k_s)
            s = tl.where(kn[None, :] < Sk, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(
                v_ptr + bh * Sk * D + kn[:, None] * D + offs_d[None, :],
                mask=(kn[:, None] < Sk) & (offs_d[None, :] < D),
                other=0.0,
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(
            out_ptr + bh * Sq * D + offs_m[:, None] * D + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=(offs_m[:, None] < Sq) & (offs_d[None, :] < D),
        )


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
) -> torch.Tensor:
    """Launch one program per (query block, batch·head); `out` (B, H, Sq, D), if given, is written in place."""
    B, H, Sq, D = q_q.shape
    Sk = k_q.shape[-2]
    q_q, k_q = q_q.contiguous(), k_q.contiguous()
    v16 = v.to(torch.float16).contiguous()
    q_s, k_s = q_s.float().contiguous(), k_s.float().contiguous()
    if out is None:
        out = torch.empty((B, H, Sq, D), device=q_q.device, dtype=out_dtype)
    block_d = max(16, triton.next_power_of_2(D))
    grid = (triton.cdiv(Sq, block_m), B * H)
    _sage_kernel[grid](
        q_q, q_s, k_q, k_s, v16, out, Sq, Sk, D, q_s.shape[-1], k_s.shape[-1],
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4 if block_m <= 64 else 8,
    )  # fmt: skip
    return out


@torch.library.custom_op(OP_NAME, mutates_args=())
def sage_attention_int8(
    q_q: torch.Tensor,
    q_s: torch.Tensor,
    k_q: torch.Tensor,
    k_s: torch.Tensor,
    v: torch.Tensor,
    block_m: int,
    block_n: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Attention over pre-quantized Q and K: Triton where it can run, the reference elsewhere."""
    if use_triton(q_q, k_q, v):
        return sage_attention_triton(q_q, q_s, k_q, k_s, v, block_m, block_n, out_dtype)
    return sage_attention_reference(q_q, q_s, k_q, k_s, v, block_m, block_n, out_dtype)


@sage_attention_int8.register_fake
def _(q_q, q_s, k_q, k_s, v, block_m, block_n, out_dtype):
    return q_q.new_empty(q_q.shape, dtype=out_dtype)


def sage_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Drop-in for `F.scaled_dot_product_attention(q, k, v)` (no mask, no dropout): (B, H, S, D) → (B, H, Sq, D)."""
    block_m, block_n = default_blocks()
    q_q, q_s, k_q, k_s = quantize_qk(q, k, block_m, block_n)
    return sage_attention_int8(q_q, q_s, k_q, k_s, v, block_m, block_n, q.dtype)
