"""ToCa: "Accelerating Diffusion Transformers with Token-wise Feature Caching" (Zou et al., 2024, arXiv
2410.05317; code github.com/Shenyi-Z/ToCa).

What is cached: the output of every attention layer and feed-forward network of every block, per token.
When it is refreshed: every layer computes every token at full calls (statically scheduled: `spacing` of
the denoising trajectory apart, or every `interval` calls as the paper's N); on the calls between, the
token-wise layers (feed-forward networks, and cross-attention to the text where the family has it)
recompute the `fraction` of their tokens that score highest, and self-/joint attention reuses its output
whole, as the final version of the official code does. Scores: the attention each token receives in its
block's self-attention at the last full call (`score: attention`, ToCa's s1; recomputed from the layer's q
and k so it runs with fused attention, at one extra q·kᵀ per block per full call), or the value norms
(`score: vnorm`, free with fused attention), plus cache age (s3) and spatial spread (s4) — see
caching/tokens.py, which holds the machinery ToCa shares with DuCa. The paper's cross-attention score (s2)
is not used: PixArt's cross-attention layers are scored by their block's self-attention and cache age.
Decisions: the full/partial schedule is per batch; the tokens picked are per sample. Runs on DiT, PixArt,
SD3, Flux and Wan; refused on U-Nets (no transformer blocks).
"""

from __future__ import annotations

from typing import Literal

from ditserve.caching.tokens import TokenCache, TokenCacheConfig
from ditserve.registry import CACHES


class ToCaConfig(TokenCacheConfig):
    name: Literal["toca"] = "toca"
    score: Literal["attention", "vnorm"] = "attention"
    """Token score: "attention" (attention received, ToCa's s1; one extra q·kᵀ per block at full calls) or
    "vnorm" (smallest value norms first: free with fused attention)."""


@CACHES.register("toca")
class ToCa(TokenCache):
    """ToCa: between full calls, token-wise layers recompute the best-scored tokens, attention is reused."""

    Config = ToCaConfig

    @property
    def score(self) -> str:
        return self.config.score
