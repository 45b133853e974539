"""T-GATE: "Cross-Attention Makes Inference Cumbersome in Text-to-Image Diffusion Models" (Zhang et al., 2024,
arXiv 2404.02747; v2 "Faster Diffusion via Temporal Attention Decomposition", github.com/HaozheLiu-ST/T-GATE).

What is cached: the output of every cross-attention layer (image tokens attending to the text). The paper
finds that cross-attention converges early: a first "semantics-planning" stretch of the trajectory lays out
what the text asks for, after which the cross-attention output barely changes and the later
"fidelity-improving" stretch does not need the text. When it is refreshed: calls before the `gate` (a
fraction of denoising progress, so it is the same stretch at any step count) compute every layer; from the
gate on, each cross-attention layer returns the output of its last computed call, averaged over the two
branches of classifier-free guidance as the paper does, and never computes again in the request. With that
average both guidance branches receive the same text signal, so the two halves of a [cond; uncond] call
then compute the same thing; `drop_guidance` runs such calls on one half and gives its result to both,
which is the paper's second saving (the guidance is spent by the gate). The engine batches a guidance pair
as [cond; uncond] on the same latents: a call whose two halves have equal latents is treated as one.

v2's self-attention caching is the option `self_interval`: before the gate, after `warmup` calls, a
self-attention layer computes every `self_interval` calls and returns its last output in between (v2's
sp_interval; after the gate it computes at every call, v2's fi_interval 1). `self_interval: 1` (the
default) is v1. `gate: 1` computes every layer at every call (bit-identical to no caching).

Families: those with cross-attention layers (the family adapter's attention layers that are
`is_cross_attention`): PixArt and Wan. DiT has no text, SD3 and Flux join text and image tokens in one
attention (MMDiT), so there is no cross-attention output to cache: they are refused at load. The saving
shows in the attention-evaluation count (and, with `drop_guidance`, in wall time). Decisions are per batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.hooks import ModelHook
from pydantic import Field

from ditserve.caching.base import CacheConfig, CacheStrategy
from ditserve.caching.progress import DenoisingProgress
from ditserve.caching.trajectory import TOLERANCE
from ditserve.errors import PlanError
from ditserve.hooks import add_hook, remove_hook
from ditserve.models.base import block_argument
from ditserve.registry import CACHES


class TGateConfig(CacheConfig):
    name: Literal["tgate"] = "tgate"
    gate: float = Field(0.7, gt=0.0, le=1.0)
    """Denoising progress (1 − t/t₀) at which the semantics-planning phase ends: from there on cross-attention
    reuses its last output; 1: never. The paper gates at step 10 of 25 on PixArt-α (0.4); on digits-scenes at
    28 steps 0.3 / 0.4 / 0.5 / 0.7 / 0.8 kept 21 / 25 / 27 / 34.7 / 39 dB against uncached (its small text
    encoder keeps steering the layout late), so the default is the earliest gate that held 30 dB there."""
    drop_guidance: bool = True
    """After the gate, run a [cond; uncond] call on its conditional half only (both halves compute the same)."""
    self_interval: int = Field(1, ge=1, le=100)
    """T-GATE v2: before the gate, self-attention computes every `self_interval` calls (1: every call, v1)."""
    warmup: int = Field(2, ge=1, le=1000)
    """Calls at the start where self-attention always computes (v2's warm-up; only with `self_interval` > 1)."""


class AttentionReuse(ModelHook):
    """On one attention layer: computes, or returns its cached output, as the cache decided for this call."""

    def __init__(self, cache: TGate, cross: bool) -> None:
        super().__init__()
        self.cache = cache
        self.cross = cross
        self.reset_state(None)

    def reset_state(self, module):
        self.output: torch.Tensor | None = None
        self.paired = False
        """Whether `output` is of a [cond; uncond] call (its halves are averaged when cross-attention freezes)."""
        self.frozen = False
        return module

    def new_forward(self, module, *args, **kwargs):
        reuse = self.cache.reuse_cross if self.cross else self.cache.reuse_self
        if not reuse or self.output is None:
            self.output = self.fn_ref.original_forward(*args, **kwargs)
            self.paired = self.cache.pair
            return self.output
        if self.cross and not self.frozen:  # the paper's average of the two guidance branches, given to both
            half = self.output.shape[0] // 2
            self.output = (self.output[:half] + self.output[half:]) / 2 if self.paired else self.output
            self.frozen = True
        rows = block_argument(module, "hidden_states", args, kwargs).shape[0]
        return torch.cat([self.output] * (rows // self.output.shape[0]))


class GuidancePair(ModelHook):
    """On the transformer, inside the progress hook: notes whether the call is a [cond; uncond] pair, and after
    the gate runs such a call on its conditional half (`drop_guidance`)."""

    def __init__(self, cache: TGate) -> None:
        super().__init__()
        self.cache = cache

    def new_forward(self, module, *args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        half = x.shape[0] // 2
        self.cache.pair = x.shape[0] % 2 == 0 and torch.equal(x[:half], x[half:])
        if not (self.cache.pair and self.cache.reuse_cross and self.cache.config.drop_guidance):
            return self.fn_ref.original_forward(*args, **kwargs)
        output = self.fn_ref.original_forward(*halved(args, 2 * half), **halved(kwargs, 2 * half))
        return doubled(output)


def halved(value, rows: int):
    """`value` (a tensor, or tuples/dicts of them) with every tensor of `rows` rows cut to its first half."""
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows:
        return value[: rows // 2]
    if isinstance(value, dict):
        return {key: halved(item, rows) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(halved(item, rows) for item in value)
    return value


def doubled(output):
    """A transformer output on one half given to both halves of the pair."""
    if isinstance(output, torch.Tensor):
        return torch.cat([output, output])
    return type(output)(doubled(item) if isinstance(item, torch.Tensor) else item for item in output)


@CACHES.register("tgate")
class TGate(CacheStrategy):
    """T-GATE: cross-attention output frozen after the semantics-planning phase (v2: self-attention reused early)."""

    Config = TGateConfig
    families = ("pixart", "wan")
    transformer = None

    @property
    def hook_name(self) -> str:
        return f"ditserve.{type(self).__name__}"

    def apply(self, model) -> None:
        layers = {} if model.adapter.family == "unet" else model.adapter.attention_layers(model.transformer)
        cross = {name for name, layer in layers.items() if getattr(layer, "is_cross_attention", False)}
        if model.adapter.family != "unet" and not cross:
            raise PlanError(
                f"cache 'tgate' runs on models with cross-attention only, and this {model.adapter.family} family "
                "transformer has none (its text, if any, joins the image tokens in one attention, as in MMDiT, or "
                "it has no text): pick a block-level cache (e.g. fora) or 'pab' in plan.cache"
            )
        self.require_family(model)
        self.transformer = model.transformer
        self.hooks = [AttentionReuse(self, name in cross) for name in layers]
        for hook, layer in zip(self.hooks, layers.values(), strict=True):
            add_hook(self.transformer, layer, hook, self.hook_name)
        add_hook(self.transformer, self.transformer, GuidancePair(self), self.hook_name + ".pair")
        self.calls = DenoisingProgress(self._decide)
        add_hook(self.transformer, self.transformer, self.calls, self.hook_name)
        self.reset()

    def reset(self) -> None:
        self.calls.reset()
        for hook in self.hooks:
            hook.reset_state(None)
        self.reuse_cross = self.reuse_self = self.pair = False

    def remove(self) -> None:
        if self.transformer is not None:  # None: `apply` refused before it reached the model
            remove_hook(self.transformer, self.hook_name)
            remove_hook(self.transformer, self.hook_name + ".pair")

    def _decide(self) -> None:
        config, call = self.config, self.calls.call
        planning = config.gate >= 1.0 or self.calls.progress < config.gate - TOLERANCE
        self.reuse_cross = call > 0 and not planning
        self.reuse_self = planning and call >= config.warmup and (call - config.warmup) % config.self_interval != 0
