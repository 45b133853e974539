"""Block-sparse attention in the manner of SpargeAttn (Zhang et al., 2025): skip key blocks that a
cheap pooled estimate says a query block barely attends to.

Estimate: mean-pool Q over each block of `block_m` tokens and K over each block of `block_n`, take
the softmax of the pooled scores, and keep, per query block, the `ceil((1 − sparsity) · n_kblk)`
key blocks with the largest pooled weight (at least one). The kernel then runs flash attention over
the kept blocks only, so its cost falls with the sparsity. Not done from SpargeAttn: its
self-similarity test that keeps blocks whose tokens are too dissimilar to be pooled, and its
second, warp-level PV skip.
"""

from __future__ import annotations

import math

import torch

from ditserve_kernels._runtime import interpreting, triton_importable, triton_or_reference

OP_NAME = "ditserve_kernels::block_sparse_attention"
GPU_BLOCKS = (128, 64)
INTERPRETER_BLOCKS = (16, 16)


def default_blocks() -> tuple[int, int]:
    return INTERPRETER_BLOCKS if interpreting() else GPU_BLOCKS


def _pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over each block of tokens (the last, partial block averages its real tokens only)."""
    B, H, S, D = x.shape
    blocks = -(-S // block)
    padded = torch.zeros(B, H, blocks * block, D, device=x.device, dtype=torch.float32)
    padded[:, :, :S] = x.float()
    counts = torch.full((blocks,), float(block), device=x.device)
    counts[-1] = S - (blocks - 1) * block
    return padded.view(B, H, blocks, block, D).sum(dim=3) / counts[:, None]


def select_blocks(q: torch.Tensor, k: torch.Tensor, sparsity: float, block_m: int, block_n: int) -> torch.Tensor:
    """Kept key blocks per query block, ascending: int32 (B, H, n_qblk, n_keep)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (got {sparsity}): it is the fraction of key blocks skipped")
    pooled = (_pool(q, block_m) @ _pool(k, block_n).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    n_kblk = pooled.shape[-1]
    keep = max(1, math.ceil((1.0 - sparsity) * n_kblk))
    return pooled.softmax(dim=-1).topk(keep, dim=-1).indices.sort(dim=-1).values.to(torch.int32).contiguous()


def block_sparse_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_index: torch.Tensor, block_m: int, block_n: int
) -> torch.Tensor:
    """The definition: exact attention in fp32 with every key outside the kept blocks masked out."""
    sq, sk = q.shape[-2], k.shape[-2]
    n_kblk = -(-sk // block_n)
    kept = torch.zeros((*block_index.shape[:-1], n_kblk), dtype=torch.bool, device=q.device)
    kept.scatter_(-1, block_index.long(), True)
    mask = kept.repeat_interleave(block_m, dim=-2)[..., :sq, :].repeat_interleave(block_n, dim=-1)[..., :sk]
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return (scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v.float()).to(q.dtype)


if triton_importable():
    import triton
    import triton.language as tl

    from ditserve_kernels._tiles import load_rows, load_rows_transposed, online_softmax, online_softmax_init, store_rows

    @triton.jit
    def _sparse_kernel(
        q_ptr,  # (B·H, Sq, D) contiguous
        k_ptr,  # (B·H, Sk, D) contiguous
        v_ptr,  # (B·H, Sk, D) contiguous
        index_ptr,  # int32 (B·H, n_qblk, n_keep): kept key blocks of each query block
        out_ptr,  # (B·H, Sq, D) contiguous output
        Sq,
        Sk,
        D,
        n_qblk,
        n_keep,
        qk_scale,  # softmax scale · log2(e)
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,  # head dim padded to a power of two ≥ 16
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        q = load_rows(q_ptr + bh * Sq * D, offs_m, offs_d, Sq, D)
        m_i, l_i, acc = online_softmax_init(BLOCK_M, BLOCK_D)
        for j in range(0, n_keep):
            kn = tl.load(index_ptr + (bh * n_qblk + pid_m) * n_keep + j) * BLOCK_N + offs_n
            k = load_rows_transposed(k_ptr + bh * Sk * D, kn, offs_d, Sk, D)
            s = tl.dot(q, k).to(tl.float32) * qk_scale
            p, alpha, m_i, l_i = online_softmax(tl.where(kn[None, :] < Sk, s, float("-inf")), m_i, l_i)
            v = load_rows(v_ptr + bh * Sk * D, kn, offs_d, Sk, D)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        store_rows(out_ptr + bh * Sq * D, offs_m, offs_d, Sq, D, acc / l_i[:, None])


def block_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_index: torch.Tensor,
    block_m: int,
    block_n: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch one program per (query block, batch·head); `out`, if given, is written in place."""
    B, H, Sq, D = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    block_index = block_index.to(torch.int32).contiguous()
    if out is None:
        out = torch.empty_like(q)
    block_d = max(16, triton.next_power_of_2(D))
    grid = (triton.cdiv(Sq, block_m), B * H)
    _sparse_kernel[grid](
        q, k, v, block_index, out, Sq, k.shape[-2], D, block_index.shape[-2], block_index.shape[-1],
        1.4426950408889634 / math.sqrt(D),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4 if block_m <= 64 else 8,
    )  # fmt: skip
    return out


def _block_sparse_attention_fake(q, k, v, block_index, block_m, block_n):
    return torch.empty_like(q)


block_sparse_attention = triton_or_reference(
    OP_NAME, block_sparse_attention_reference, block_sparse_attention_triton, _block_sparse_attention_fake
)
"""Attention over the kept key blocks: Triton where it can run, the reference elsewhere."""


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop-in for `F.scaled_dot_product_attention(q, k, v)` skipping about `sparsity` of the key blocks."""
    block_m, block_n = default_blocks()
    index = select_blocks(q, k, sparsity, block_m, block_n)
    return block_sparse_attention(q, k, v, index, block_m, block_n)
