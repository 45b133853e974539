"""Tile arithmetic the kernels share: which output tile a GEMM program owns, how an attention kernel
loads and stores a (tokens, head dim) tile, and the online-softmax update of flash attention.

They are `@triton.jit` helpers, which Triton inlines into the calling kernel, so a kernel compiles as
if they were written out in it. Attention tiles are rows of one (batch·head)'s contiguous (S, D)
matrix, masked to the S real tokens and the D real channels (the tile's width is D padded to a power
of two); masked-off values load as zero.
"""

from __future__ import annotations

from ditserve_kernels._runtime import triton_importable

if triton_importable():
    import triton
    import triton.language as tl

    @triton.jit
    def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """(pid_m, pid_n) of program `pid`: tiles are visited GROUP_M rows at a time, so that programs
        running together share weight tiles in L2 (Triton's matmul tutorial's grouped ordering)."""
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * num_pid_n
        first_m = (pid // per_group) * GROUP_M
        group_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_m
        pid_n = (pid % per_group) // group_m
        return pid_m, pid_n

    @triton.jit
    def load_rows(ptr, rows, offs_d, S, D):
        """The (len(rows), len(offs_d)) tile of the (S, D) matrix at `ptr`."""
        return tl.load(
            ptr + rows[:, None] * D + offs_d[None, :], mask=(rows[:, None] < S) & (offs_d[None, :] < D), other=0.0
        )

    @triton.jit
    def load_rows_transposed(ptr, rows, offs_d, S, D):
        """The same tile transposed, (len(offs_d), len(rows)): Kᵀ for the QKᵀ dot."""
        return tl.load(
            ptr + rows[None, :] * D + offs_d[:, None], mask=(rows[None, :] < S) & (offs_d[:, None] < D), other=0.0
        )

    @triton.jit
    def store_rows(ptr, rows, offs_d, S, D, tile):
        """Write `tile` into the (S, D) matrix at `ptr`, in the matrix's dtype."""
        tl.store(
            ptr + rows[:, None] * D + offs_d[None, :],
            tile.to(ptr.dtype.element_ty),
            mask=(rows[:, None] < S) & (offs_d[None, :] < D),
        )

    @triton.jit
    def online_softmax_init(BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
        """Flash attention's running state before the first key block: row maxima -inf, sums and output zero."""
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        return m_i, l_i, acc

    @triton.jit
    def online_softmax(s, m_i, l_i):
        """One key block of flash attention's softmax, in base 2: from the block's scores `s` and the running
        row maxima `m_i` and sums `l_i`, the block's unnormalized probabilities, the factor that rescales
        what was accumulated before, and the new maxima and sums."""
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        return p, alpha, m_new, l_i * alpha + tl.sum(p, axis=1)
