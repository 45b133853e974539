"""The torch references and the ops' CPU path: the schemes' fidelity against exact math, the fake
implementations (`torch.library.opcheck`), and the dispatcher's fallback when Triton cannot run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ditserve_kernels import _runtime
from ditserve_kernels.adaln_layernorm import adaln_layernorm
from ditserve_kernels.sage_attention import quantize_qk, sage_attention, sage_attention_int8
from ditserve_kernels.sparse_attention import block_sparse_attention, select_blocks, sparse_attention
from ditserve_kernels.w4a4_gemm import pack_int4, quantize_int4, unpack_int4, w4a4_gemm
from ditserve_kernels.w8a8_gemm import quantize_per_channel, quantize_per_token, w8a8_gemm, w8a8_linear


@pytest.fixture
def g():
    return torch.Generator().manual_seed(torch.seed() % 2**31)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_dispatcher_uses_reference_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not _runtime.use_triton(torch.zeros(1))


def test_w8a8_linear_is_close_to_float_linear(g):
    x, w, b = torch.randn(33, 96, generator=g), torch.randn(40, 96, generator=g), torch.randn(40, generator=g)
    w_q, w_s = quantize_per_channel(w)
    # 8-bit symmetric rounding on both operands: about 1% relative error on Gaussian data
    assert rel(w8a8_linear(x, w_q, w_s, b), F.linear(x, w, b)) < 0.02


def test_int4_pack_roundtrip_and_w4a4_close_to_float(g):
    q = torch.randint(-8, 8, (6, 128), generator=g, dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(q, 64), 64), q)
    x, w = torch.randn(20, 128, generator=g), torch.randn(24, 128, generator=g)
    a_q, a_s = quantize_int4(x, 64)
    w_q, w_s = quantize_int4(w, 64)
    zero_rank = torch.zeros(20, 1), torch.zeros(1, 24)
    y = w4a4_gemm(pack_int4(a_q, 64), a_s, pack_int4(w_q, 64), w_s, *zero_rank, None, 64, torch.float32)
    # 4 bits on both sides: ~10-20% relative error without the low-rank branch (why SVDQuant has one)
    assert rel(y, x @ w.T) < 0.3
    lora_act, lora_up = x[:, :3], torch.randn(3, 24, generator=g)
    y2 = w4a4_gemm(pack_int4(a_q, 64), a_s, pack_int4(w_q, 64), w_s, lora_act, lora_up, None, 64, torch.float32)
    assert torch.allclose(y2 - y, lora_act @ lora_up, atol=1e-4)


def test_adaln_layernorm_matches_dit_block_formula(g):
    x, shift, scale = (
        torch.randn(2, 5, 48, generator=g),
        torch.randn(2, 48, generator=g),
        torch.randn(2, 48, generator=g),
    )
    norm = torch.nn.LayerNorm(48, elementwise_affine=False, eps=1e-6)  # what diffusers' AdaLayerNormZero runs
    want = norm(x) * (1 + scale[:, None]) + shift[:, None]
    assert torch.allclose(adaln_layernorm(x, shift, scale, 1e-6), want, atol=1e-5)


def test_sage_attention_close_to_exact_attention_and_smoothing_matters(g):
    q, k, v = (torch.randn(1, 2, 96, 64, generator=g) for _ in range(3))
    k = k + 4.0 * torch.randn(1, 2, 1, 64, generator=g)  # a channel-wise offset shared by all tokens
    exact = F.scaled_dot_product_attention(q, k, v)
    # random Gaussian attention averages noise into a small output, which magnifies relative error: 2%
    assert rel(sage_attention(q, k, v), exact) < 2e-2
    # without smoothing the same offset costs int8 resolution: the smoothed error must be smaller
    bm, bn = 128, 64
    from ditserve_kernels.sage_attention import quantize_per_block

    q_q, q_s = quantize_per_block(q, bm, 1 / math.sqrt(64))
    k_q, k_s = quantize_per_block(k, bn)
    unsmoothed = sage_attention_int8(q_q, q_s, k_q, k_s, v, bm, bn, torch.float32)
    assert rel(sage_attention(q, k, v), exact) < rel(unsmoothed, exact)


def test_sparse_attention_is_exact_at_zero_sparsity_and_keeps_the_requested_share(g):
    q, k, v = (torch.randn(1, 2, 200, 32, generator=g) for _ in range(3))
    assert rel(sparse_attention(q, k, v, 0.0), F.scaled_dot_product_attention(q, k, v)) < 1e-5
    index = select_blocks(q, k, 0.75, 16, 16)
    assert index.shape[-1] == math.ceil(0.25 * 13)
    assert (index.diff(dim=-1) > 0).all()  # ascending, no block twice
    with pytest.raises(ValueError, match="sparsity must be in"):
        select_blocks(q, k, 1.0, 16, 16)


def test_fake_implementations_pass_opcheck(g):
    a_q, a_s = quantize_per_token(torch.randn(9, 64, generator=g))
    w_q, w_s = quantize_per_channel(torch.randn(10, 64, generator=g))
    torch.library.opcheck(w8a8_gemm, (a_q, a_s, w_q, w_s, None, torch.float32))
    x4, s4 = quantize_int4(torch.randn(9, 64, generator=g), 32)
    wq4, ws4 = quantize_int4(torch.randn(10, 64, generator=g), 32)
    lora = torch.randn(9, 2, generator=g), torch.randn(2, 10, generator=g)
    torch.library.opcheck(w4a4_gemm, (pack_int4(x4, 32), s4, pack_int4(wq4, 32), ws4, *lora, None, 32, torch.float32))
    x = torch.randn(2, 3, 16, generator=g)
    torch.library.opcheck(adaln_layernorm, (x, torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g), 1e-6))
    q, k, v = (torch.randn(1, 1, 20, 16, generator=g) for _ in range(3))
    torch.library.opcheck(
        sage_attention_int8, (*quantize_qk(q, k, 16, 16)[:2], *quantize_qk(q, k, 16, 16)[2:], v, 16, 16, torch.float32)
    )
    torch.library.opcheck(block_sparse_attention, (q, k, v, select_blocks(q, k, 0.5, 16, 16), 16, 16))


def test_ops_trace_through_torch_compile_as_opaque_calls(g):
    x, shift, scale = (
        torch.randn(2, 3, 16, generator=g),
        torch.randn(2, 16, generator=g),
        torch.randn(2, 16, generator=g),
    )
    compiled = torch.compile(lambda a, b, c: adaln_layernorm(a, b, c, 1e-6) * 2, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x, shift, scale), adaln_layernorm(x, shift, scale, 1e-6) * 2)
