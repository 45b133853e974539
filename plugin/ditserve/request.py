"""The transport-neutral request and result: what REST, gRPC, the CLI and Python callers all build.

Field types and absolute bounds live here; the limits of a particular model (max steps, batch, size)
are checked by `Engine.validate`, which names the field and the limit that was broken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the results carry tensors; building and validating a request needs no torch
    import torch

MAX_SEED = 2**63 - 1


class GenerationRequest(BaseModel):
    """One request: what to draw, how many, and how hard to work at it."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    prompt: str | None = None
    """Text for text-to-image models; for class-conditional models, a class name ("seven", "7")."""
    class_label: int | None = Field(None, ge=0)
    """Class id for class-conditional models (instead of a prompt)."""
    steps: int | None = Field(None, ge=1)
    """Denoising steps; default: the plan's sampler steps."""
    guidance_scale: float | None = Field(None, ge=0.0, le=100.0)
    """Classifier-free guidance scale; ≤ 1 runs the conditional branch only. Default: the model's."""
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    """Image k of the request uses seed + k, so any image can be re-made alone. Default: random."""
    num_images: int = Field(1, ge=1)
    """Images to generate for this prompt."""
    height: int | None = Field(None, ge=1)
    """Image height in pixels; default: the model's native size."""
    width: int | None = Field(None, ge=1)
    """Image width in pixels; default: the model's native size."""
    num_frames: int | None = Field(None, ge=1)
    """Video models: frames per video; default: the model's (its checkpoint's `num_frames`). Image models refuse
    it. Bounded by the config's `limits.max_frames`; a Wan VAE needs 4k + 1 frames (4 frames per latent frame)."""
    sampler: dict[str, Any] | None = None
    """Per-request sampler override, `{name: ..., fields}`, when the model config allows overrides."""
    cache: dict[str, Any] | None = None
    """Per-request cache override, `{name: ..., fields}`, when the model config allows it (`limits.overrides`)."""
    init_image: bytes | None = None
    """Edits: the PNG to start from (image-to-image, SDEdit); its size is the output's (default height and
    width, and they must match it when given). Without a mask the whole image is redrawn at `strength`."""
    mask: bytes | None = None
    """Edits: a PNG of the init image's size; where it is transparent (or, without transparency, light: grey
    ≥ 128) the image is generated (inpainting), elsewhere the init image is kept exactly. Needs `init_image`."""
    strength: float | None = Field(None, gt=0.0, le=1.0)
    """Edits: how much of the denoising runs, from noise level `strength` of the schedule (1: from pure noise,
    the init image only shows through a mask's kept region). Default: 0.8 without a mask, 1.0 with one
    (diffusers' img2img and inpaint defaults)."""
    lora: str | None = Field(None, min_length=1, max_length=64)
    """A LoRA adapter of the model by name (`ditserve.lora`: the model directory's `loras/<name>/`); default: none,
    the base model. Requests with different adapters never share a model call."""
    lora_scale: float | None = Field(None, ge=0.0, le=2.0)
    """How strongly the adapter applies (its low-rank update times this); default 1. Needs `lora`."""
    approx_cache: bool = True
    """Whether this request may start part-way from an earlier similar request's run, and leave its own for later
    ones, where the model's plan enables the cross-request cache (`ditserve.nirvana`); false: from its own noise,
    as on a server without that cache."""
    tenant: str | None = Field(None, max_length=128)
    """The API key's digest, stamped by the serving runtime (transports do not take it from clients): the
    cross-request cache never lets one key's requests start from another's."""


@dataclass
class GenerationStats:
    """What one request cost: counts are machine-independent, seconds are this machine's."""

    steps: int = 0
    """Denoising steps completed."""
    batch_size: int = 0
    """Images in the batched run this result was part of (several requests may share one)."""
    model_evaluations: int = 0
    """Transformer calls (a guided call on the doubled batch counts once): the sequential model rounds."""
    timestep_evaluations: int = 0
    """Model evaluations counted per timestep: a parallel sampler's call over a window of k timesteps
    counts k (equal to `model_evaluations` for step-by-step samplers)."""
    block_evaluations: int = 0
    """Transformer blocks actually computed over the whole request."""
    block_evaluations_full: int = 0
    """Blocks the same calls would have computed with no caching."""
    attention_evaluations: int = 0
    """Attention layers actually computed (attention-level caches such as PAB skip these inside blocks that run)."""
    attention_evaluations_full: int = 0
    """Attention layers the same calls would have computed with no caching."""
    token_evaluations: int = 0
    """Tokens actually computed, summed over the token layers (attention layers and feed-forward networks) of
    every block and call: a layer run on 30% of its tokens adds 0.3 of what it adds in full (token-level caches
    such as ToCa and DuCa recompute only the tokens they pick). 0 where the blocks are compiled (not counted)."""
    token_evaluations_full: int = 0
    """Tokens the same calls would have computed with no caching."""
    resumed_from: int = 0
    """The step this request started from, on an earlier similar request's run (the cross-request cache,
    `ditserve.nirvana`; its images then depend on that run, not only on the seeds); 0: from its own noise."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time per phase: condition, denoise, decode, total."""

    @property
    def blocks_skipped(self) -> int:
        return self.block_evaluations_full - self.block_evaluations


@dataclass
class GenerationResult:
    """Images in [0, 1], (N, C, H, W) float32 on the CPU, with the seeds that made them and the cost. A video
    model's result has videos instead: `videos` (N, frames, C, H, W) in [0, 1] and `images` None, so that no
    caller takes a video for a batch of images."""

    images: torch.Tensor | None
    seeds: list[int]
    stats: GenerationStats
    prompt: str | int
    videos: torch.Tensor | None = None

    @classmethod
    def of(cls, pixels: torch.Tensor, seeds: list[int], stats: GenerationStats, prompt: str | int):
        """The result for decoded pixels: images (N, C, H, W), or videos (N, frames, C, H, W)."""
        if pixels.ndim == 5:
            return cls(images=None, seeds=seeds, stats=stats, prompt=prompt, videos=pixels)
        return cls(images=pixels, seeds=seeds, stats=stats, prompt=prompt)


@dataclass
class ProgressEvent:
    """Sent after every denoising step; `latents` is the sampler's current state (for previews)."""

    step: int
    total: int
    elapsed: float
    latents: torch.Tensor
