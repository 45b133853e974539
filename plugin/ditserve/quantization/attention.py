"""Attention backends: replace the SDPA call inside the transformer blocks' attention modules.

Used by the `sage` and `sparse` quantizers. The processor below is diffusers' `AttnProcessor2_0`
path for plain self- and cross-attention with the final `F.scaled_dot_product_attention` swapped for
a kernel; inputs it does not handle (an attention mask, 4-d feature maps, group/spatial norms) go to
the module's original processor, so they stay exact. Families whose attention modules use other
processors (joint attention in SD3/Flux, rotary embeddings in Wan) are refused at load.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from ditserve.errors import PlanError

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`attend(q, k, v)` on (batch, heads, tokens, head_dim) tensors, like SDPA without mask or dropout."""


class KernelAttnProcessor:
    """`AttnProcessor2_0` with a kernel in place of SDPA (and the original processor as fallback)."""

    def __init__(self, attend: Attend, fallback) -> None:
        self.attend = attend
        self.fallback = fallback

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):  # fmt: skip
        unusual = attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_cross
        if attention_mask is not None or hidden_states.ndim != 3 or unusual:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attn.scale != head_dim**-0.5:  # the kernels use 1/sqrt(head_dim); fold any other scale into q
            query = query * (attn.scale * head_dim**0.5)
        out = self.attend(query, key, value)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install(model, attend: Attend, backend: str) -> int:
    """Give every attention module in the transformer's blocks the kernel processor; returns how many."""
    installed = 0
    for group in model.adapter.block_groups(model.transformer):
        for module in group.blocks.modules():
            if not isinstance(module, Attention):
                continue
            processor = module.processor
            if type(processor) is not AttnProcessor2_0:
                raise PlanError(
                    f"quant {backend!r} replaces AttnProcessor2_0 attention, but {group.name} of family "
                    f"{model.adapter.family!r} uses {type(processor).__name__}; use a weight quantizer "
                    "(int8, w8a8, fp8, svdquant, mixed) for this model, or quant: none"
                )
            module.set_processor(KernelAttnProcessor(attend, processor))
            installed += 1
    return installed
