"""Sequence sharding of a diffusers transformer: cut the tokens at the input, swap in a distributed attention,
gather the tokens at the output.

Every rank of a sequence-parallel group runs the whole transformer on its own contiguous shard of the
tokens. Per-token layers need nothing; only self-attention mixes tokens, so only its core product
(softmax(QKᵀ)V on projected, normed, rotated q/k/v) is replaced by a distributed one (Ulysses, Ring,
USP, DistriFusion's stale-KV attention). Where and how to cut and gather is a context-parallel plan in
diffusers' own format (`ContextParallelInput` / `ContextParallelOutput`): the model's `_cp_plan` where
diffusers ships one (Flux), else the plan below for the family.

Why the core product is intercepted rather than the processor replaced: the processors hold the
projections, QK-norms and rotary embeddings, which must stay exactly diffusers'. diffusers' own hook
point for this (`ContextParallelConfig`) does not run on CPU (it divides by
`torch.accelerator.device_count()`, 0 there) and its Ring needs a backend returning the log-sum-exp.
So, while a sharded self-attention module runs (between its forward pre- and post-hook), the calls its
processor makes to `F.scaled_dot_product_attention` (AttnProcessor2_0: DiT, PixArt) or to
`dispatch_attention_fn` (Flux's processors) go to the distributed attention. Outside those windows
both names behave exactly as the originals, so a cross-attention (PixArt's `attn2`, whose keys are
the full text) and any other code are untouched.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from torch import nn

from ditserve.parallel.comm import Comm

CoreAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`attention(q, k, v) -> out`, all (batch, heads, local tokens, head dim), softmax scale 1/sqrt(head dim)."""

FAMILY_PLANS: dict[str, dict] = {
    # DiT: tokens exist from the patch embedding to the last linear; the unpatchify needs them all.
    "dit": {
        "pos_embed": ContextParallelInput(split_dim=1, expected_dims=3, split_output=True),
        "proj_out_2": ContextParallelOutput(gather_dim=1, expected_dims=3),
    },
    "pixart": {
        "pos_embed": ContextParallelInput(split_dim=1, expected_dims=3, split_output=True),
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    },
}
"""Context-parallel plans for families whose diffusers model has no `_cp_plan`."""

_ACTIVE: contextvars.ContextVar[CoreAttention | None] = contextvars.ContextVar("ditserve_sp_attention", default=None)


def plan_for(family: str, transformer: nn.Module) -> dict:
    plan = FAMILY_PLANS.get(family) or getattr(type(transformer), "_cp_plan", None)
    if not plan:
        raise ValueError(f"family {family!r} has no context-parallel plan: sequence parallelism cannot run it")
    return plan


def self_attentions(model) -> list[nn.Module]:
    """The self-attention modules inside the adapter's blocks (Flux's joint attention counts; cross does not)."""
    found = []
    for group in model.adapter.block_groups(model.transformer):
        for module in group.blocks.modules():
            if (
                hasattr(module, "processor")
                and hasattr(module, "heads")
                and not getattr(module, "is_cross_attention", False)
            ):
                found.append(module)
    return found


def _sdpa_router(original):
    def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        attention = _ACTIVE.get()
        if attention is None or attn_mask is not None or is_causal or kwargs:
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)
        return attention(query, key, value)

    return scaled_dot_product_attention


def _dispatch_router(original):
    def dispatch_attention_fn(query, key, value, attn_mask=None, *args, **kwargs):
        attention = _ACTIVE.get()
        if attention is None or attn_mask is not None:
            return original(query, key, value, attn_mask, *args, **kwargs)
        # dispatch_attention_fn takes and returns (batch, tokens, heads, head dim)
        out = attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        return out.transpose(1, 2)

    return dispatch_attention_fn


class _FunctionalProxy:
    """`torch.nn.functional` with `scaled_dot_product_attention` routed; everything else passes through."""

    def __init__(self, functional) -> None:
        self._functional = functional
        self.scaled_dot_product_attention = _sdpa_router(functional.scaled_dot_product_attention)

    def __getattr__(self, name):
        return getattr(self._functional, name)


def _install_routers() -> None:
    """Route the two attention entry points of diffusers' processors (idempotent; per process)."""
    from diffusers.models import attention_processor
    from diffusers.models.transformers import transformer_flux

    if not isinstance(attention_processor.F, _FunctionalProxy):
        attention_processor.F = _FunctionalProxy(attention_processor.F)
    if not getattr(transformer_flux.dispatch_attention_fn, "_ditserve_router", False):
        routed = _dispatch_router(transformer_flux.dispatch_attention_fn)
        routed._ditserve_router = True
        transformer_flux.dispatch_attention_fn = routed


@dataclass
class Sharding:
    """Hooks installed on one model; `remove` puts it back as loaded."""

    handles: list = field(default_factory=list)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def shard_sequence(model, group, comm: Comm, attention: CoreAttention) -> Sharding:
    """Install the plan's split/gather hooks over `group` and `attention` in every self-attention."""
    transformer = model.transformer
    plan = plan_for(model.adapter.family, transformer)
    sharding = Sharding()
    size, rank = group.size, group.rank

    def split(value, spec: ContextParallelInput):
        if not isinstance(value, torch.Tensor) or value.dim() != spec.expected_dims:
            return value
        length = value.shape[spec.split_dim]
        if length % size:
            raise ValueError(f"{length} tokens cannot be cut into {size} equal shards")
        return value.chunk(size, dim=spec.split_dim)[rank].contiguous()

    for name, entry in plan.items():
        module = transformer.get_submodule(name) if name else transformer
        if isinstance(entry, ContextParallelOutput):
            sharding.handles.append(module.register_forward_hook(_gatherer(group, comm, entry)))
            continue
        inputs = {key: spec for key, spec in entry.items()} if isinstance(entry, dict) else None
        if inputs is not None:

            def pre_hook(_module, args, kwargs, inputs=inputs):
                return args, {key: split(v, inputs[key]) if key in inputs else v for key, v in kwargs.items()}

            sharding.handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        elif entry.split_output:
            sharding.handles.append(module.register_forward_hook(lambda _m, _a, out, spec=entry: split(out, spec)))
        else:
            raise ValueError(f"unsupported context-parallel entry {name!r}: {entry}")

    sharding.handles += route_attention(self_attentions(model), lambda _layer: attention)
    return sharding


def route_attention(modules: list[nn.Module], attention_for: Callable[[int], CoreAttention]) -> list:
    """While `modules[i]` runs, its processor's attention product goes to `attention_for(i)`; returns the
    hook handles (remove them to undo)."""
    _install_routers()
    handles = []
    for layer, attn in enumerate(modules):
        tokens: list = []
        attention = attention_for(layer)

        def enter(_module, _args, tokens=tokens, attention=attention):
            tokens.append(_ACTIVE.set(attention))

        def leave(_module, _args, _out, tokens=tokens):
            _ACTIVE.reset(tokens.pop())

        handles.append(attn.register_forward_pre_hook(enter))
        handles.append(attn.register_forward_hook(leave))
    return handles


def _gatherer(group, comm: Comm, spec: ContextParallelOutput):
    def gather(_module, _args, out):
        if not isinstance(out, torch.Tensor) or out.dim() != spec.expected_dims:
            return out
        return comm.all_gather(out, group, dim=spec.gather_dim)

    return gather
