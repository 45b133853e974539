"""Token-wise feature caching: the machinery ToCa and DuCa share (caching/toca.py, caching/duca.py).

ToCa (Zou et al., 2024, arXiv 2410.05317, github.com/Shenyi-Z/ToCa) observed that between two steps most
tokens of a layer barely change: a layer can recompute the few tokens that matter and keep the others'
cached outputs. `TokenCache.apply` hooks (`ditserve.hooks`) the token layers of every block the adapter lists
(`ditserve.counters.token_layers`: attention layers and feed-forward networks) and keeps each layer's last
output — the layer's own output, before the block's gate, so that the block still applies the current
step's adaLN modulation, gates and residual additions to a reused output, as ToCa's blocks do. Layers are
of two kinds:

- token-wise: a feed-forward network, and a cross-attention to the text (PixArt's and Wan's `attn2`): an
  output token depends only on its own input token (and the text), so the layer can run on a subset;
- mixing: self-attention and joint attention, where every output token depends on every input token. ToCa's
  final version computes no attention tokens on its partial steps (its `ToCa` branch reuses the attention
  output whole); so do we by default (`attention: reuse`). `attention: partial` runs a plain self-attention
  layer (diffusers' `AttnProcessor2_0`: DiT, PixArt) on the picked tokens too, the partial attention the
  ToCa code keeps as an unused branch: their queries attend to the keys and values of every token, those
  of the picked tokens computed afresh and the others' kept from when they were last computed (hooks on
  the layer's `to_k`/`to_v` projections hold them), so the layer costs about `fraction` of its full cost.
  Layers with rotary embeddings or a second stream (SD3, Flux, Wan) are reused whole.

Per transformer call (so per batch: both halves of the [cond; uncond] batch together) the subclass picks a
mode. `full`: every layer computes, and the caches and scores refresh. `partial`: mixing layers return their
cached output; token-wise layers run on the `fraction` of tokens with the highest score, per sample, and
their cached output takes the new rows (the rest stay as they were). `reuse`: every layer returns its
cached output (FORA inside the block; DuCa's aggressive steps). Full calls are scheduled statically
(caching/trajectory.py), spaced along the denoising trajectory so they hold at any step count, or every
`interval` calls as the papers do; `interval: 1` computes everything (bit-identical to no caching).

Token scores (per block and sample, refreshed at full calls from the block's first mixing attention layer):
- `attention` (ToCa's s1): the attention each token receives, Σ_q softmax(q·kᵀ/√d) averaged over heads.
  Fused attention (SDPA) returns no map, so the map is recomputed from the layer's q and k, captured by
  hooks on its `to_q`/`to_k` projections at full calls: one extra q·kᵀ per block per full call (counted in
  FLOPs), none on partial calls. q is taken before any q/k normalisation (SD3, Flux), an approximation.
- `vnorm` (DuCa's V-caching score, the `kv-norm` score of the ToCa/DuCa code): tokens with the smallest value
  vectors (‖v‖ summed over heads) first; needs no map and no extra product, so it is free with fused attention.
Layers whose tokens are not the scored ones (SD3's and Flux's text stream, whose feed-forward has its own
token count) are scored by cache age alone. On top of either score, as ToCa does: the cache age of each
token in that layer (s3: calls since the token was last computed, times `age_weight`), so no token is
left stale for long; and a spatial spread (s4, ToCa's `local_selection_with_bonus`): on a square token
grid, the best token of every 2×2 cell gets its score raised by `spread` of itself, so picks do not cluster.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from diffusers.hooks import ModelHook
from pydantic import Field
from torch import nn

from ditserve.caching.base import CacheConfig, CacheStrategy
from ditserve.caching.progress import DenoisingProgress
from ditserve.caching.trajectory import static_full_step
from ditserve.counters import token_layers
from ditserve.hooks import add_hook, remove_hook
from ditserve.models.base import LoadedModel

Mode = Literal["full", "partial", "reuse"]
CELL = 2
"""Side of the token-grid cells whose best token gets the spread bonus (ToCa's grid_size)."""


class TokenCacheConfig(CacheConfig):
    """Fields every token-wise cache has: when to refresh everything, and how many tokens to recompute."""

    fraction: float = Field(0.3, gt=0.0, le=1.0)
    """Share of each token-wise layer's tokens recomputed on a partial call (ToCa's fresh ratio)."""
    spacing: float = Field(0.08, gt=0.0, le=1.0)
    """Full calls are at least this much denoising progress (1 − t/t₀) apart (caching/trajectory.py); the
    calls between are partial. Holds its fidelity at any step count."""
    interval: int | None = Field(None, ge=1, le=100)
    """The papers' N: a full call every `interval` calls instead of by `spacing` (1: every call, no caching)."""
    warmup: int = Field(1, ge=0, le=1000)
    """Calls at the start that always compute in full (the layout forms there)."""
    ends: float = Field(0.0, ge=0.0, lt=1.0)
    """How much denser full calls come at the trajectory's start and end than in its middle (0: even)."""
    age_weight: float = Field(0.1, ge=0.0, le=10.0)
    """Score added per call a token went without being recomputed in that layer (ToCa's cache-frequency
    score s3), against token scores scaled to at most 1: 0 ranks by the score alone."""
    attention: Literal["reuse", "partial"] = "reuse"
    """Self-attention on partial calls: "reuse" its cached output whole (ToCa's final version), or "partial":
    recompute the picked tokens' outputs against every token's keys and values, the stale ones cached (DiT and
    PixArt; other families reuse)."""
    spread: float = Field(0.6, ge=0.0, le=10.0)
    """Bonus, as a share of its own score, for the best token of every 2×2 cell of a square token grid
    (ToCa's uniform spatial distribution s4; 0.6 is the ToCa code's); 0: none."""


class LayerHook(ModelHook):
    """On a token layer: runs it, on all tokens or the picked ones, or returns its cached output."""

    def __init__(self, cache: TokenCache, slot: int) -> None:
        super().__init__()
        self.cache = cache
        self.slot = slot

    def new_forward(self, module: nn.Module, *args, **kwargs):
        return self.cache.forward_layer(self.slot, self.fn_ref.original_forward, args, kwargs)


class CaptureHook(ModelHook):
    """On a scoring attention layer's q, k or v projection: keeps its output of a full call for the score."""

    def __init__(self, cache: TokenCache, role: str) -> None:
        super().__init__()
        self.cache = cache
        self.role = role

    def post_forward(self, module: nn.Module, output):
        if self.cache.mode == "full":
            self.cache.captured[self.role] = output
        return output


class KeyValueHook(ModelHook):
    """On a partial attention layer's key or value projection: keeps its output for every token, and on a partial
    call puts the picked tokens' fresh rows into it and hands the attention every token's."""

    def __init__(self, cache: TokenCache, slot: int, role: str) -> None:
        super().__init__()
        self.cache = cache
        self.key = (slot, role)

    def new_forward(self, module: nn.Module, states: torch.Tensor):
        fresh = self.fn_ref.original_forward(states)
        picking = self.cache.picking
        if picking is None or picking[0] != self.key[0]:
            self.cache.keys[self.key] = fresh
            return fresh
        kept = self.cache.keys[self.key]
        kept.scatter_(1, picking[1].unsqueeze(-1).expand(-1, -1, fresh.shape[-1]), fresh)
        return kept


PARTIAL_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")
"""Attention processors whose queries may be fewer than their keys with nothing else to change (no rotary
embedding, no second stream): diffusers' plain ones, of DiT and PixArt."""


class TokenCache(CacheStrategy):
    """Base of token-wise caches: subclasses pick each call's mode (`begin_call`) and the token score."""

    Config = TokenCacheConfig
    score: ClassVar[str] = "attention"
    """How tokens are ranked: "attention" (received attention) or "vnorm" (smallest value norms first)."""
    model: LoadedModel | None = None

    @property
    def hook_name(self) -> str:
        return f"ditserve.{type(self).__name__}"

    def apply(self, model: LoadedModel) -> None:
        self.require_family(model)
        self.model = model
        from diffusers.models.attention import FeedForward

        self.layers = layers = token_layers(model)
        attention = set(map(id, model.adapter.attention_layers(model.transformer).values()))
        blocks = [block for group in model.adapter.block_groups(model.transformer) for block in group.blocks]
        owner = {id(m): index for index, block in enumerate(blocks) for m in block.modules()}
        self.block_of = [owner[id(layer)] for layer in layers]
        self.token_wise = [isinstance(m, FeedForward) or getattr(m, "is_cross_attention", False) for m in layers]
        self.partial = [
            wise
            or (
                self.config.attention == "partial"
                and id(layer) in attention
                and type(getattr(layer, "processor", None)).__name__ in PARTIAL_PROCESSORS
            )
            for layer, wise in zip(layers, self.token_wise, strict=True)
        ]
        """Slot → whether the layer runs on the picked tokens on partial calls (else it is reused whole)."""
        self.scorer: dict[int, int] = {}
        """Block → the slot of its first mixing attention layer, whose q, k, v give the block's scores."""
        for slot, layer in enumerate(layers):
            block = self.block_of[slot]
            if id(layer) in attention and not self.token_wise[slot] and block not in self.scorer:
                self.scorer[block] = slot
        self.calls = DenoisingProgress(self._begin_call)
        self.reset()
        root, name = model.transformer, self.hook_name
        for slot, layer in enumerate(layers):
            add_hook(root, layer, LayerHook(self, slot), name)
            if self.partial[slot] and not self.token_wise[slot]:
                for role in ("to_k", "to_v"):
                    add_hook(root, getattr(layer, role), KeyValueHook(self, slot, role), f"{name}.kv")
            if self.scorer.get(self.block_of[slot]) == slot:
                for role in ("to_q", "to_k") if self.score == "attention" else ("to_v",):
                    add_hook(root, getattr(layer, role), CaptureHook(self, role), f"{name}.score")
        add_hook(model.transformer, model.transformer, self.calls, self.hook_name)

    def remove(self) -> None:
        if self.model is not None:
            for name in (self.hook_name, f"{self.hook_name}.kv", f"{self.hook_name}.score"):
                remove_hook(self.model.transformer, name)

    def reset(self) -> None:
        self.calls.reset()
        self.mode: Mode = "full"
        self.last_full = 0.0
        self.since_full = 0
        """Calls since the last full call (0 on a full call)."""
        self.outputs: dict[int, Any] = {}
        """Slot → the layer's cached output (a tensor, or a joint attention's tuple)."""
        self.ages: dict[int, torch.Tensor] = {}
        """Slot of a token-wise layer → (batch, tokens): calls since each token was computed there."""
        self.scores: dict[int, torch.Tensor] = {}
        """Block → (batch, tokens) token scores from its last full call, scaled to at most 1 per sample."""
        self.captured: dict[str, torch.Tensor] = {}
        self.keys: dict[tuple[int, str], torch.Tensor] = {}
        """(slot, "to_k" or "to_v") → a partial attention layer's keys or values of every token."""
        self.picking: tuple[int, torch.Tensor] | None = None
        """(slot, picked tokens) while a partial attention layer runs on the picked tokens."""

    # -- the schedule ---------------------------------------------------------------------------

    def _begin_call(self) -> None:
        config = self.config
        full = static_full_step(
            self.calls.call,
            self.calls.progress,
            self.last_full,
            config.warmup,
            config.interval,
            config.spacing,
            config.ends,
        )
        if full:
            self.last_full = self.calls.progress
            self.since_full = 0
            self.mode = "full"
        else:
            self.since_full += 1
            self.mode = self.between_full()

    def between_full(self) -> Mode:
        """The mode of a call that is not full (`since_full` says how many calls ago the last full one was)."""
        return "partial"

    # -- the layers -----------------------------------------------------------------------------

    def forward_layer(self, slot: int, forward, args: tuple, kwargs: dict) -> Any:
        """Layer `slot`'s output for this call, as the call's mode decides."""
        states = args[0] if args else kwargs["hidden_states"]
        cached = self.outputs.get(slot)
        stale = not isinstance(cached, torch.Tensor) or cached.shape[:2] != states.shape[:2]
        if self.mode == "full" or cached is None or (self.partial[slot] and stale) or states.ndim != 3:
            output = forward(*args, **kwargs)
            self.outputs[slot] = output
            self.ages.pop(slot, None)
            if self.scorer.get(self.block_of[slot]) == slot:
                self._refresh_score(slot)
            return output
        if not self.partial[slot]:
            return cached
        if self.mode == "reuse":
            self._age(slot, states)
            return cached
        picked = self._pick(slot, states)
        rows = picked.unsqueeze(-1)
        chosen = states.gather(1, rows.expand(-1, -1, states.shape[-1]))
        if args:
            args = (chosen, *args[1:])
        else:
            kwargs = {**kwargs, "hidden_states": chosen}
        self.picking = (slot, picked)
        try:
            fresh = forward(*args, **kwargs)
        finally:
            self.picking = None
        cached.scatter_(1, rows.expand(-1, -1, fresh.shape[-1]), fresh.to(cached.dtype))
        self._age(slot, states).scatter_(1, picked, 0)
        return cached

    def _age(self, slot: int, states: torch.Tensor) -> torch.Tensor:
        """Layer `slot`'s token ages, one call older."""
        age = self.ages.get(slot)
        if age is None:
            age = self.ages[slot] = torch.zeros(states.shape[:2], dtype=torch.int32, device=states.device)
        return age.add_(1)

    def _pick(self, slot: int, states: torch.Tensor) -> torch.Tensor:
        """(batch, k): the tokens layer `slot` recomputes in this call, per sample."""
        batch, tokens = states.shape[:2]
        score = self.scores.get(self.block_of[slot])
        if score is None or score.shape != (batch, tokens):
            score = torch.zeros(batch, tokens, device=states.device)
        age = self.ages.get(slot)
        if age is not None:
            score = score + self.config.age_weight * age
        side = math.isqrt(tokens)
        if self.config.spread and side * side == tokens and side % CELL == 0:
            score = spread_bonus(score, side, self.config.spread)
        return score.topk(max(1, round(self.config.fraction * tokens)), dim=1, sorted=False).indices

    def _refresh_score(self, slot: int) -> None:
        """Block scores from the q, k (or v) that the scoring layer of a full call computed."""
        captured, self.captured = self.captured, {}
        heads = self.layers[slot].heads
        if self.score == "attention":
            q, k = (split_heads(captured[role], heads) for role in ("to_q", "to_k"))
            received = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1).mean(1).sum(1)
        else:
            norms = split_heads(captured["to_v"], heads).norm(dim=-1).sum(1)  # (batch, tokens)
            received = norms.amax(1, keepdim=True) - norms
        self.scores[self.block_of[slot]] = received / received.amax(1, keepdim=True).clamp_min(1e-12)


def split_heads(projected: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, heads·d) → (batch, heads, tokens, d)."""
    batch, tokens, _ = projected.shape
    return projected.reshape(batch, tokens, heads, -1).transpose(1, 2)


def spread_bonus(score: torch.Tensor, side: int, bonus: float) -> torch.Tensor:
    """ToCa's s4: on a side×side token grid, the best token of every 2×2 cell gets `bonus` of its score added."""
    batch = score.shape[0]
    cells = score.reshape(batch, side // CELL, CELL, side // CELL, CELL).permute(0, 1, 3, 2, 4)
    cells = cells.reshape(batch, -1, CELL * CELL)
    best, where = cells.max(dim=-1, keepdim=True)
    cells = cells.scatter_add(-1, where, best * bonus)
    cells = cells.reshape(batch, side // CELL, side // CELL, CELL, CELL).permute(0, 1, 3, 2, 4)
    return cells.reshape(batch, side * side)
