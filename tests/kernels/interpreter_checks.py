"""Checks of the Triton kernels themselves, run by `test_triton_interpreter.py` in a subprocess with
`TRITON_INTERPRET=1` (Triton reads it at import, and it must not leak into other tests' process).

Usage: TRITON_INTERPRET=1 python tests/kernels/interpreter_checks.py KERNEL SEED
Each check draws fresh random inputs from SEED at small, deliberately ragged shapes (not multiples
of the tiles), fills the output buffer with NaN first (an element the kernel forgets to write
fails), compares against the torch reference with the tolerance written next to it, and runs
`torch.library.opcheck` on the op (which, under the interpreter, runs the Triton kernel). It prints
one JSON line of the worst errors and exits non-zero on the first mismatch.
"""

from __future__ import annotations

import json
import os
import sys

import torch

DTYPES = (torch.float32, torch.float16)  # the interpreter mishandles bf16 dots (STACK-NOTES.md)


def poisoned(shape, dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype)


def close(name: str, got: torch.Tensor, want: torch.Tensor, rel: float) -> float:
    """Max |got − want| relative to max |want|; raises above `rel` (NaN, i.e. an unwritten element, too)."""
    err = ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1e-6)).item()
    if not err <= rel:
        raise AssertionError(f"{name}: relative error {err:.3g} exceeds {rel:g}")
    return err


def check_w8a8_gemm(g: torch.Generator) -> dict:
    from ditserve_kernels.w8a8_gemm import (
        quantize_per_channel,
        quantize_per_token,
        w8a8_gemm,
        w8a8_gemm_reference,
        w8a8_gemm_triton,
    )

    errors = {}
    M, K, N = 37, 80, 50
    for dtype in DTYPES:
        a_q, a_s = quantize_per_token(torch.randn(M, K, generator=g))
        w_q, w_s = quantize_per_channel(torch.randn(N, K, generator=g))
        bias = torch.randn(N, generator=g).to(dtype)
        for b in (bias, None):
            out = poisoned((M, N), dtype)
            w8a8_gemm_triton(a_q, a_s, w_q, w_s, b, dtype, out=out)
            want = w8a8_gemm_reference(a_q, a_s, w_q, w_s, b, dtype)
            # int32 sums are exact; only the fp32 scaling differs in order (and fp16 output rounding)
            errors[f"{dtype}-bias{b is not None}"] = close("w8a8", out, want, 1e-5 if dtype == torch.float32 else 1e-3)
        torch.library.opcheck(w8a8_gemm, (a_q, a_s, w_q, w_s, bias, dtype))
    return errors


def check_w4a4_gemm(g: torch.Generator) -> dict:
    from ditserve_kernels.w4a4_gemm import pack_int4, quantize_int4, w4a4_gemm, w4a4_gemm_reference, w4a4_gemm_triton

    errors = {}
    M, K, N, R, G = 21, 128, 40, 5, 32
    for dtype in DTYPES:
        a_q, a_s = quantize_int4(torch.randn(M, K, generator=g), G)
        w_q, w_s = quantize_int4(torch.randn(N, K, generator=g), G)
        a_p, w_p = pack_int4(a_q, G), pack_int4(w_q, G)
        lora_act = torch.randn(M, R, generator=g).to(dtype)
        lora_up = torch.randn(R, N, generator=g).to(dtype)
        bias = torch.randn(N, generator=g).to(dtype)
        for b in (bias, None):
            out = poisoned((M, N), dtype)
            w4a4_gemm_triton(a_p, a_s, w_p, w_s, lora_act, lora_up, b, G, dtype, out=out)
            want = w4a4_gemm_reference(a_p, a_s, w_p, w_s, lora_act, lora_up, b, G, dtype)
            errors[f"{dtype}-bias{b is not None}"] = close("w4a4", out, want, 1e-5 if dtype == torch.float32 else 2e-3)
        torch.library.opcheck(w4a4_gemm, (a_p, a_s, w_p, w_s, lora_act, lora_up, bias, G, dtype))
    return errors


def check_adaln_layernorm(g: torch.Generator) -> dict:
    from ditserve_kernels.adaln_layernorm import adaln_layernorm, adaln_layernorm_reference, adaln_layernorm_triton

    errors = {}
    B, S, D = 3, 7, 72
    for dtype in DTYPES:
        x = (torch.randn(B, S, D, generator=g) * 3 + 1).to(dtype)
        shift, scale = torch.randn(B, D, generator=g).to(dtype), torch.randn(B, D, generator=g).to(dtype)
        out = poisoned((B, S, D), dtype)
        adaln_layernorm_triton(x, shift, scale, 1e-6, out=out)
        want = adaln_layernorm_reference(x, shift, scale, 1e-6)
        # fp32 statistics either way; fp16 differs by the output's rounding (2^-11 relative)
        errors[str(dtype)] = close("adaln", out, want, 1e-5 if dtype == torch.float32 else 1e-3)
        torch.library.opcheck(adaln_layernorm, (x, shift, scale, 1e-6))
    return errors


def check_sage_attention(g: torch.Generator) -> dict:
    from ditserve_kernels.sage_attention import (
        default_blocks,
        quantize_qk,
        sage_attention_int8,
        sage_attention_reference,
        sage_attention_triton,
    )

    errors = {}
    bm, bn = default_blocks()
    for dtype in DTYPES:
        for (sq, sk, d), per_token in (
            ((40, 40, 32), (True, True)),  # key tiles with a ragged end: the masked path
            ((19, 35, 8), (True, False)),  # head dim below the tile's 16 as well
            ((40, 48, 32), (False, True)),  # whole key tiles, head dim = tile: the unmasked (EVEN) path
            ((33, 48, 16), (False, False)),
        ):
            q, k, v = (torch.randn(2, 2, s, d, generator=g).to(dtype) for s in (sq, sk, sk))
            # an offset in K: what the smoothing removes
            q_q, q_s, k_q, k_s = quantize_qk(q, k + 2.0, bm, bn, per_token=per_token)
            out = poisoned((2, 2, sq, d), dtype)
            sage_attention_triton(q_q, q_s, k_q, k_s, v, bm, bn, dtype, out=out)
            want = sage_attention_reference(q_q, q_s, k_q, k_s, v, bm, bn, dtype)
            # the kernel rounds the unnormalized P to fp16 (the reference rounds none): ~2^-11 relative
            errors[f"{dtype}-{sq}x{sk}x{d}"] = close("sage", out, want, 3e-3)
            out = poisoned((2, 2, sq, d), dtype)
            sage_attention_triton(q_q, q_s, k_q, k_s, v, bm, bn, dtype, out=out, pv_fp8=True)
            want = sage_attention_reference(q_q, q_s, k_q, k_s, v, bm, bn, dtype, pv_fp8=True)
            # fp8 P is rounded from the running-max P in the kernel, from the final-max P in the reference,
            # and the interpreter's in-kernel fp32 → E4M3 rounding is not always torch's (seen: up to one E4M3
            # step on some elements): each P element may differ by up to 2^-3 relative, averaged over the keys.
            # Over 8 seeds: 0.05 to 0.14 here (near-uniform attention over ≤ 48 keys makes the output small against
            # its rounding); a wrong scale or layout gives ~1. The fp8 path's real check is benchmarks/kernels_gpu.py.
            errors[f"{dtype}-{sq}x{sk}x{d}-pv_fp8"] = close("sage fp8 PV", out, want, 0.25)
        torch.library.opcheck(sage_attention_int8, (q_q, q_s, k_q, k_s, v, bm, bn, dtype))
        torch.library.opcheck(sage_attention_int8, (q_q, q_s, k_q, k_s, v, bm, bn, dtype, True))
    return errors


def check_sparse_attention(g: torch.Generator) -> dict:
    from ditserve_kernels.sparse_attention import (
        block_sparse_attention,
        block_sparse_attention_reference,
        block_sparse_attention_triton,
        default_blocks,
        select_blocks,
    )

    errors = {}
    bm, bn = default_blocks()
    for dtype in DTYPES:
        for sq, sk, d, sparsity in ((45, 70, 16, 0.5), (33, 33, 8, 0.0), (64, 64, 32, 0.75)):
            q, k, v = (torch.randn(1, 2, s, d, generator=g).to(dtype) for s in (sq, sk, sk))
            index = select_blocks(q, k, sparsity, bm, bn)
            out = poisoned((1, 2, sq, d), dtype)
            block_sparse_attention_triton(q, k, v, index, bm, bn, out=out)
            want = block_sparse_attention_reference(q, k, v, index, bm, bn)
            # fp32: same sums in another order; fp16: P rounded to fp16 before PV
            errors[f"{dtype}-{sq}x{sk}x{d}-s{sparsity}"] = close(
                "sparse", out, want, 1e-5 if dtype == torch.float32 else 3e-3
            )
        torch.library.opcheck(block_sparse_attention, (q, k, v, index, bm, bn))
    return errors


def check_vq_gemm(g: torch.Generator) -> dict:
    from ditserve_kernels.vq_gemm import pack_bits, vq_gemm, vq_gemm_reference, vq_gemm_triton

    errors = {}
    M, N = 21, 37
    for dtype in DTYPES:
        # (bits, dim, K): codes that straddle bytes (3, 5, 6 bits), whole bytes (8), K not a multiple of the tile
        for bits, dim, K in ((5, 2, 72), (8, 4, 80), (3, 1, 40), (6, 8, 64)):
            x = torch.randn(M, K, generator=g).to(dtype)
            codes = pack_bits(torch.randint(0, 2**bits, (N, K // dim), generator=g), bits)
            codebook = torch.randn(2**bits, dim, generator=g).half()
            scale = (torch.rand(N, K // 8 if dim < 8 else 1, generator=g) + 0.5).half()  # groups of 8, or rows
            bias = torch.randn(N, generator=g).to(dtype)
            for b in (bias, None):
                out = poisoned((M, N), dtype)
                vq_gemm_triton(x, codes, codebook, scale, b, bits, dtype, out=out)
                want = vq_gemm_reference(x, codes, codebook, scale, b, bits, dtype)
                # the same products summed in another order; fp16 inputs and output rounded alike
                errors[f"{dtype}-{bits}b-d{dim}-bias{b is not None}"] = close(
                    "vq", out, want, 1e-5 if dtype == torch.float32 else 2e-3
                )
        torch.library.opcheck(vq_gemm, (x, codes, codebook, scale, bias, bits, dtype))
    return errors


def main() -> int:
    kernel, seed = sys.argv[1], int(sys.argv[2])
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1: these checks run the Triton kernels on the CPU")
    torch.set_num_threads(1)
    errors = globals()[f"check_{kernel}"](torch.Generator().manual_seed(seed))
    print(json.dumps({"kernel": kernel, "seed": seed, "errors": errors}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
