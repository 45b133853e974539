"""Run by test_ring_kernel.py with TRITON_INTERPRET=1: the Triton attention-with-LSE kernel against its
reference at ragged shapes, fp32 and fp16 inputs; prints the worst errors as one JSON line."""

from __future__ import annotations

import json
import sys

import torch

from ditserve_kernels.ring_attention import attention_with_lse, attention_with_lse_reference, attention_with_lse_triton

torch.manual_seed(int(sys.argv[1]))
worst = {"out": 0.0, "lse": 0.0}
for dtype, tolerance in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
    for sq, sk, d in ((19, 37, 8), (16, 5, 24)):
        q, k, v = (torch.randn(2, 3, s, d).to(dtype) for s in (sq, sk, sk))
        out, lse = attention_with_lse_triton(q, k, v)
        want_out, want_lse = attention_with_lse_reference(q, k, v)
        for name, got, want in (("out", out, want_out), ("lse", lse, want_lse)):
            err = (got - want).abs().max().item()
            assert err <= tolerance, f"{name} {dtype} {sq}x{sk}x{d}: error {err}"
            worst[name] = max(worst[name], err)
torch.library.opcheck(attention_with_lse, (q, k, v))
print(json.dumps(worst))
