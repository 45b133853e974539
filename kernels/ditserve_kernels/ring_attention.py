"""One block of ring attention: softmax(q kᵀ/√d) v over a block of keys, with each query's log-sum-exp.

Ring attention (ditserve.parallel.ring) computes each query shard against one key/value shard at a
time and merges the partial results exactly by their log-sum-exps; so the per-block attention must
return the LSE, which `F.scaled_dot_product_attention` does not. The kernel is a flash-attention
forward (online softmax in base 2, fp32 accumulation) that also writes lse = m + log(l) per query.
The reference is the definition: plain fp32 scores, logsumexp, exp(scores − lse) @ v.
"""

from __future__ import annotations

import torch

from ditserve_kernels._runtime import interpreting, triton_importable, triton_or_reference

OP_NAME = "ditserve_kernels::attention_with_lse"
LN2 = 0.6931471805599453


def attention_with_lse_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, Sq, D), (B, H, Sk, D) ×2 → out (B, H, Sq, D) fp32 and lse (B, H, Sq, 1) fp32."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = scores.logsumexp(dim=-1, keepdim=True)
    return torch.exp(scores - lse) @ v.float(), lse


if triton_importable():
    import triton
    import triton.language as tl

    from ditserve_kernels._tiles import load_rows, load_rows_transposed, online_softmax, online_softmax_init, store_rows

    @triton.jit
    def _attention_lse_kernel(
        q_ptr,  # (B·H, Sq, D) contiguous
        k_ptr,  # (B·H, Sk, D) contiguous
        v_ptr,  # (B·H, Sk, D) contiguous
        out_ptr,  # fp32 (B·H, Sq, D): the normalized attention output
        lse_ptr,  # fp32 (B·H, Sq): natural-log log-sum-exp of each query's scaled scores
        Sq,
        Sk,
        D,
        scale,  # softmax scale times log2(e): scores in base 2
        BLOCK_M: tl.constexpr,  # queries per program
        BLOCK_N: tl.constexpr,  # keys per iteration
        BLOCK_D: tl.constexpr,  # head dim padded to a power of two ≥ 16 (tl.dot's minimum)
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        q = load_rows(q_ptr + bh * Sq * D, offs_m, offs_d, Sq, D).to(tl.float32)
        m_i, l_i, acc = online_softmax_init(BLOCK_M, BLOCK_D)
        for start in range(0, Sk, BLOCK_N):
            kn = start + offs_n
            k = load_rows_transposed(k_ptr + bh * Sk * D, kn, offs_d, Sk, D).to(tl.float32)
            s = tl.dot(q, k) * scale
            p, alpha, m_i, l_i = online_softmax(tl.where(kn[None, :] < Sk, s, float("-inf")), m_i, l_i)
            v = load_rows(v_ptr + bh * Sk * D, kn, offs_d, Sk, D).to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p, v)
        store_rows(out_ptr + bh * Sq * D, offs_m, offs_d, Sq, D, acc / l_i[:, None])
        tl.store(lse_ptr + bh * Sq + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=offs_m < Sq)


def attention_with_lse_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch one program per (query block, batch·head)."""
    B, H, Sq, D = q.shape
    Sk = k.shape[-2]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty((B, H, Sq, D), device=q.device, dtype=torch.float32)
    lse = torch.empty((B, H, Sq, 1), device=q.device, dtype=torch.float32)
    block_m, block_n = (16, 16) if interpreting() else (64, 64)
    grid = (triton.cdiv(Sq, block_m), B * H)
    _attention_lse_kernel[grid](
        q, k, v, out, lse, Sq, Sk, D, D**-0.5 / LN2,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(D)),
    )  # fmt: skip
    return out, lse


def _attention_with_lse_fake(q, k, v):
    return q.new_empty(q.shape, dtype=torch.float32), q.new_empty((*q.shape[:-1], 1), dtype=torch.float32)


attention_with_lse = triton_or_reference(
    OP_NAME, attention_with_lse_reference, attention_with_lse_triton, _attention_with_lse_fake
)
"""Attention of `q` over one block of keys and its log-sum-exp: Triton where it can run, else the reference."""
