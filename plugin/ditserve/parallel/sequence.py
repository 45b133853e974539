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
So, while a sharded self-attention module runs (inside its `ATTENTION_HOOK`), the calls its processor
makes to `F.scaled_dot_product_attention` (AttnProcessor2_0: DiT, PixArt) or to `dispatch_attention_fn`
(Flux's processors) go to the distributed attention. Outside those windows both names behave exactly as
the originals, so a cross-attention (PixArt's `attn2`, whose keys are the full text) and any other code
are untouched.

Every hook here is a diffusers `ModelHook` registered by name through `ditserve.hooks` (`SHARD_HOOK` on the
plan's modules, `ATTENTION_HOOK` on the self-attentions), so it chains with the counters, caches and the
CFG split on the same modules and comes off in any order with them.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

import torch
from diffusers.hooks import ModelHook
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from torch import nn

from ditserve.errors import PlanError
from ditserve.hooks import add_hook, remove_hook
from ditserve.parallel.comm import Comm

CoreAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`attention(q, k, v) -> out`, all (batch, heads, local tokens, head dim), softmax scale 1/sqrt(head dim)."""
AttentionFor = Callable[[int], CoreAttention]
"""`attention_for(i)`: the core attention of self-attention `i` (in `self_attentions` order). Per layer, so a
runner that keeps state per layer (stale keys/values) finds it by the layer, not by counting calls, which a
cache that skips some blocks of a call would put out of step."""

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


ROUTED_PROCESSOR_MODULES = ("diffusers.models.attention_processor", "diffusers.models.transformers.transformer_flux")
"""Where the processors live whose attention product `_install_routers` reaches: those of the first call
`F.scaled_dot_product_attention` through its `F`, Flux's call its `dispatch_attention_fn`."""


def check_routable(model) -> None:
    """Refuse, at load, a self-attention whose processor computes its product where the routers cannot reach
    it: each rank would attend over its own tokens only, and nothing would say so."""
    for module in self_attentions(model):
        processor = type(module.processor)
        if processor.__module__ not in ROUTED_PROCESSOR_MODULES:
            raise PlanError(
                f"sequence and patch parallelism reach the attention product of diffusers' processors in "
                f"{' and '.join(ROUTED_PROCESSOR_MODULES)}, not that of {processor.__name__} "
                f"({processor.__module__}): with an attention quantizer (sage, sparse) use a weight quantizer or "
                "quant none; for a family with its own processor use cfg or data parallelism"
            )


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


SHARD_HOOK = "ditserve.sequence_shard"
"""The name of the hooks that cut the tokens at the plan's inputs and gather them at its outputs."""
ATTENTION_HOOK = "ditserve.sequence_attention"
"""The name of the hooks that route a self-attention's core product while the module runs."""


class SplitInputsHook(ModelHook):
    """Cuts the keyword arguments the plan names to this rank's shard before the module runs."""

    def __init__(self, inputs: dict[str, ContextParallelInput], group) -> None:
        super().__init__()
        self.inputs, self.group = inputs, group

    def pre_forward(self, module, *args, **kwargs):
        cut = {key: _shard(kwargs[key], spec, self.group) for key, spec in self.inputs.items() if key in kwargs}
        return args, {**kwargs, **cut}


class SplitOutputHook(ModelHook):
    """Cuts the module's output to this rank's shard (the first module that makes the tokens)."""

    def __init__(self, spec: ContextParallelInput, group) -> None:
        super().__init__()
        self.spec, self.group = spec, group

    def post_forward(self, module, output):
        return _shard(output, self.spec, self.group)


class GatherOutputHook(ModelHook):
    """Puts every rank's shard of the module's output back together (the last module that needs tokens)."""

    def __init__(self, spec: ContextParallelOutput, group, comm: Comm) -> None:
        super().__init__()
        self.spec, self.group, self.comm = spec, group, comm

    def post_forward(self, module, output):
        if not isinstance(output, torch.Tensor) or output.dim() != self.spec.expected_dims:
            return output
        return self.comm.all_gather(output, self.group, dim=self.spec.gather_dim)


class RouteAttentionHook(ModelHook):
    """While its module runs, the attention product its processor computes goes to `attention`; before and
    after, and when the module raises, both routed names behave as the originals."""

    def __init__(self, attention: CoreAttention) -> None:
        super().__init__()
        self.attention = attention

    def new_forward(self, module, *args, **kwargs):
        token = _ACTIVE.set(self.attention)
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)


def _shard(value, spec: ContextParallelInput, group):
    """This rank's contiguous shard of `value` along `spec.split_dim` (anything else passes through)."""
    if not isinstance(value, torch.Tensor) or value.dim() != spec.expected_dims:
        return value
    length = value.shape[spec.split_dim]
    if length % group.size:
        raise ValueError(f"{length} tokens cannot be cut into {group.size} equal shards")
    return value.chunk(group.size, dim=spec.split_dim)[group.rank].contiguous()


def shard_sequence(model, group, comm: Comm, attention_for: AttentionFor) -> None:
    """Install the plan's cut/gather hooks over `group`, and `attention_for(i)` in self-attention `i`
    (undo: `unshard_sequence`)."""
    transformer = model.transformer
    route_attention(model, attention_for)
    for name, entry in plan_for(model.adapter.family, transformer).items():
        module = transformer.get_submodule(name) if name else transformer
        if isinstance(entry, ContextParallelOutput):
            hook = GatherOutputHook(entry, group, comm)
        elif isinstance(entry, dict):
            hook = SplitInputsHook(dict(entry), group)
        elif entry.split_output:
            hook = SplitOutputHook(entry, group)
        else:
            raise ValueError(f"unsupported context-parallel entry {name!r}: {entry}")
        add_hook(transformer, module, hook, SHARD_HOOK)


def unshard_sequence(model) -> None:
    """Remove `shard_sequence`'s hooks: every rank computes the whole sequence with the local attention again."""
    remove_hook(model.transformer, SHARD_HOOK)
    unroute_attention(model)


def route_attention(model, attention_for: AttentionFor) -> None:
    """While self-attention `i` of `self_attentions(model)` runs, its processor's attention product goes to
    `attention_for(i)` (undo: `unroute_attention`)."""
    check_routable(model)
    _install_routers()
    for layer, module in enumerate(self_attentions(model)):
        add_hook(model.transformer, module, RouteAttentionHook(attention_for(layer)), ATTENTION_HOOK)


def unroute_attention(model) -> None:
    remove_hook(model.transformer, ATTENTION_HOOK)
