"""DuCa: "Accelerating Diffusion Transformers with Dual Feature Caching" (Zou et al., 2024, arXiv 2412.18911;
code github.com/Shenyi-Z/DuCa).

What is cached: the output of every attention layer and feed-forward network of every block, per token
(the machinery of ToCa, caching/tokens.py). When it is refreshed: every layer computes every token at full
calls (statically scheduled: `spacing` of the denoising trajectory apart, or every `interval` calls); the
calls between alternate, as the paper's dual schedule does, between conservative ones (odd calls after a
full one: token-wise layers recompute the `fraction` of their tokens that score highest, attention is
reused) and aggressive ones (even calls: every layer reuses its output whole, FORA inside the block). The
paper found aggressive and conservative caching err in opposite directions, so alternating them cancels
part of the error at a lower cost than conservative caching alone. Token score: DuCa's V-norm ("V-caching":
the tokens with the smallest value vectors first), taken from the value projection at full calls, so it
needs no attention map and runs with fused attention at no extra cost; plus cache age and spatial spread
as in ToCa. Decisions: the schedule is per batch; the tokens picked are per sample. Runs on DiT, PixArt,
SD3, Flux and Wan; refused on U-Nets (no transformer blocks).
"""

from __future__ import annotations

from typing import Literal

from ditserve.caching.tokens import Mode, TokenCache, TokenCacheConfig
from ditserve.registry import CACHES


class DuCaConfig(TokenCacheConfig):
    name: Literal["duca"] = "duca"


@CACHES.register("duca")
class DuCa(TokenCache):
    """DuCa: between full calls, conservative (token-wise) and aggressive (whole-reuse) calls alternate."""

    Config = DuCaConfig
    score = "vnorm"

    def between_full(self) -> Mode:
        return "partial" if self.since_full % 2 == 1 else "reuse"
