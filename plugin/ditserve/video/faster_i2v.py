"""Faster I2V (Taghipour et al., 2024, "Faster Image2Video Generation: A Closer Look at CLIP Image Embedding's
Impact on Spatio-Temporal Cross-Attentions", VCUT): the image's cross-attention matters while the video's layout
is decided and stops mattering once it is; from there on, reuse its last output or drop it.

In an image-to-video Wan model the first frame's tokens are attended in every block's attn2 beside the
prompt's (video_i2v.FirstFrameAttnProcessor): the image term softmax(q·k_imgᵀ)·v_img is added to the text term
before the output projection. VCUT found that on Stable Video Diffusion the CLIP image cross-attention shapes
the early, "semantic binding" steps and can be replaced by a value cached there for the later "quality" steps.
Here the switch is a noise level: at every transformer call whose largest timestep is at or below
`switch_sigma` × 1000, each block's image term is not computed; `mode="cache"` adds the one that block computed
at the last call above the switch (VCUT's cache), `mode="skip"` adds nothing (the model then runs as trained
for the batches without an image, train_video_i2v.IMAGE_DROPOUT). Above the switch the run is the
unaccelerated one, bit for bit. What it saves: the image attention (q·k_imgᵀ and p·v_img over IMAGE_TOKENS keys)
and the image key/value projections, in every block, from the switch on.

Where it stops mattering, measured on digits-video-i2v (benchmarks/video_faster_i2v.py,
benchmarks/results/video-faster-i2v.md; 8 held-out first frames, 28 steps). The image term's share of attn2's
output, ‖W_out·term‖/‖output‖, is 0.06-0.20 per block and nearly flat over the steps (block 0 rises from 0.055
to 0.106 towards σ = 0, the others stay at 0.12-0.20): no step where it fades by itself. What it changes in the
video does fade: reusing it from σ = 0.8 / 0.6 / 0.4 / 0.2 on keeps the videos at 39.3 / 44.0 / 51.2 / 60.3 dB of
the unaccelerated ones (dropping it: 33.1 / 37.0 / 43.0 / 49.1 dB), per-frame accuracy 0.188-0.203 against 0.203.
It stops mattering after the first ~20% of the noise range: the default (cache, σ ≤ 0.8) is the earliest switch
measured that holds 30 dB and the accuracies within 0.02. It leaves out 79% of the image terms, which is only
2.5% of the attention FLOPs (17 image keys beside 512 video and 8 text keys) and 1.6% of all FLOPs; wall
speed-up 1.11 (0.96-1.15 over 3 pairs, CPU, loaded machine), within noise. On this model the image term is cheap,
so the technique saves little; it pays where image tokens are many against video tokens.

One transformer call per step is assumed (classifier-free guidance rows batched, as video_i2v.generate does):
with the branches in separate calls, `cache` would hand one branch's kept term to the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from diffusers import WanTransformer3DModel

from ditserve.models.digits.video_i2v import FirstFrameAttnProcessor

HOOK_NAME = "faster_i2v"


@dataclass(frozen=True)
class FasterI2VConfig:
    """When the image term stops being computed and what stands in for it."""

    switch_sigma: float = 0.8
    """Noise level (σ in (0, 1]) at and below which the image term is not computed."""
    mode: Literal["cache", "skip"] = "cache"
    """`cache`: add each block's image term from the last call above the switch; `skip`: add none."""

    def __post_init__(self) -> None:
        if not 0 <= self.switch_sigma <= 1:
            raise ValueError(f"switch_sigma is a noise level in [0, 1], got {self.switch_sigma}")
        if self.mode not in ("cache", "skip"):
            raise ValueError(f"mode is 'cache' or 'skip', got {self.mode!r}")


@dataclass
class FasterI2VState:
    """Where the run is and what was done: the current call's noise level, the image terms kept per block, and
    how many image terms were computed and left out (counted per block call)."""

    sigma: float = 1.0
    late: bool = False
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    computed: int = 0
    left_out: int = 0

    def reset(self) -> None:
        self.sigma, self.late, self.computed, self.left_out = 1.0, False, 0, 0
        self.kept.clear()


class FasterI2VProcessor(FirstFrameAttnProcessor):
    """Block `index`'s cross-attention, its image term computed only above the switch."""

    def __init__(self, index: int, config: FasterI2VConfig, state: FasterI2VState):
        super().__init__()
        self.index, self.config, self.state = index, config, state

    def image_term(self, attn, query: torch.Tensor, image: torch.Tensor) -> torch.Tensor | None:
        kept = self.state.kept.get(self.index)
        reusable = kept is not None and kept.shape == query.transpose(1, 2).flatten(2).shape
        if self.state.late and (self.config.mode == "skip" or reusable):
            self.state.left_out += 1
            return kept if self.config.mode == "cache" else None
        self.state.computed += 1
        term = super().image_term(attn, query, image)
        if self.config.mode == "cache":
            self.state.kept[self.index] = term
        return term


class FasterI2V:
    """Faster I2V applied to a transformer: `state` holds the counts; `remove()` restores the full cross-attention.

    A pre-forward hook reads each call's noise level; a level above the previous call's starts a new run (the
    state resets, so nothing kept from one request reaches the next)."""

    def __init__(self, transformer: WanTransformer3DModel, config: FasterI2VConfig):
        self.transformer, self.config, self.state = transformer, config, FasterI2VState()
        for index, block in enumerate(transformer.blocks):
            block.attn2.set_processor(FasterI2VProcessor(index, config, self.state))
        self.handle = transformer.register_forward_pre_hook(self.read_level, with_kwargs=True)
        transformer._ditserve_faster_i2v = self

    def read_level(self, module, args, kwargs) -> None:
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        sigma = float(timestep.max()) / 1000
        if sigma > self.state.sigma:
            self.state.reset()
        self.state.sigma = sigma
        self.state.late = sigma <= self.config.switch_sigma

    def remove(self) -> None:
        self.handle.remove()
        for block in self.transformer.blocks:
            block.attn2.set_processor(FirstFrameAttnProcessor())
        del self.transformer._ditserve_faster_i2v


def apply_faster_i2v(transformer: WanTransformer3DModel, config: FasterI2VConfig | None = None) -> FasterI2V:
    """Compute the image cross-attention of `transformer` (an I2V model with `FirstFrameAttnProcessor`s) only
    above `config.switch_sigma`."""
    if getattr(transformer, f"_ditserve_{HOOK_NAME}", None) is not None:
        raise ValueError("Faster I2V is already applied to this transformer; call .remove() on it first")
    if transformer.config.added_kv_proj_dim is None:
        raise ValueError(
            "Faster I2V needs an image-to-video transformer (image tokens in cross-attention, added_kv_proj_dim "
            "set); this one is text-to-video, which has no image term to leave out"
        )
    return FasterI2V(transformer, config or FasterI2VConfig())
