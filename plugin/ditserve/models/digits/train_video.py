"""Train the embedded text-to-video model on moving digits: `python -m ditserve.models.digits.train_video`.

The result is a Wan pipeline directory (transformer/, text_encoder/, tokenizer/, scheduler/, model_index.json)
for `builtin:digits-video`: prompt ("a seven moving left", video_prompts.py) → T5 tokens → a tiny T5 encoder →
Wan transformer (self-attention over 8 frames × 64 tokens, cross-attention to the prompt) → 8 frames of 16×16
pixels in which the digit moves one pixel per frame on a wrapping canvas (moving.py). Seeded and deterministic
on a given machine.

What it is: rectified flow as Wan (x_t = (1 − σ)·x₀ + σ·ε, the transformer predicts ε − x₀ at timestep 1000·σ,
σ drawn logit-normally), in pixel space (no VAE), trained diffusion-forcing style (Chen et al., 2024,
"Diffusion Forcing: Next-token Prediction Meets Full-Sequence Diffusion"): for half the clips of a batch every
frame gets its own noise level, for the other half all frames share one. The transformer takes a timestep per
token (as Wan 2.2 TI2V does), so per-frame levels are native to it, which the video techniques that denoise
frames at different levels (FIFO-Diffusion's diagonal queue) need; the shared level is the ordinary sampler's
case. The prompt is dropped to "" once per clip for classifier-free guidance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from torch import nn

from ditserve.models.digits.moving import CANVAS, FRAMES, native_digits, random_clips
from ditserve.models.digits.t5_text import t5_encoder
from ditserve.models.digits.training import parse_args, train_text_model
from ditserve.models.digits.video_prompts import MAX_TOKENS, build_tokenizer, example_prompts, sample_prompts

DEFAULT_OUT = Path(__file__).parent / "digits-video"
TEXT_WIDTH = 64
CALL_DEFAULTS = {"max_sequence_length": MAX_TOKENS, "num_frames": FRAMES, "height": CANVAS, "width": CANVAS}
"""Pipeline-call defaults this checkpoint needs (Wan's are 512 tokens and 81 frames of 480×832)."""
PATCH = (1, 2, 2)
TRANSFORMER_CONFIG = dict(
    patch_size=PATCH,
    num_attention_heads=4,
    attention_head_dim=24,
    in_channels=1,
    out_channels=1,
    text_dim=TEXT_WIDTH,
    freq_dim=64,
    ffn_dim=192,
    num_layers=4,
    rope_max_seq_len=64,
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)
SHARED_LEVEL_FRACTION = 0.5
"""The fraction of clips whose frames all share one noise level (the rest get one level per frame)."""


def build_pipeline() -> WanPipeline:
    """The untrained pipeline: Wan transformer (4 blocks, width 96, 512 video tokens) and a tiny T5."""
    tokenizer = build_tokenizer()
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=t5_encoder(tokenizer, TEXT_WIDTH, MAX_TOKENS, umt5=True),
        vae=None,
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        transformer=WanTransformer3DModel(**TRANSFORMER_CONFIG),
    )


def trained_modules(pipe: WanPipeline) -> nn.ModuleDict:
    return nn.ModuleDict({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder})


def token_timesteps(sigma: torch.Tensor) -> torch.Tensor:
    """Per-frame noise levels (N, frames) as the transformer's per-token timesteps (N, frames × tokens per
    frame): Wan orders its tokens frame by frame."""
    per_frame = (CANVAS // PATCH[1]) * (CANVAS // PATCH[2])
    return (sigma * SCHEDULER_CONFIG["num_train_timesteps"]).repeat_interleave(per_frame, dim=1)


def velocity(
    pipe: WanPipeline, x0, noise, sigma, prompts: list[str], **conditions
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's velocity at x_t = (1 − σ)x₀ + σε with per-frame σ (N, frames), and the target ε − x₀;
    `conditions` go to the transformer besides the prompt (the I2V model's `encoder_hidden_states_image`)."""
    unique = list(dict.fromkeys(prompts))
    embeds, _ = pipe.encode_prompt(
        unique, do_classifier_free_guidance=False, max_sequence_length=MAX_TOKENS, device=x0.device
    )
    index = torch.tensor([unique.index(p) for p in prompts])
    s = sigma[:, None, :, None, None]
    pred = pipe.transformer(
        hidden_states=(1 - s) * x0 + s * noise,
        timestep=token_timesteps(sigma),
        encoder_hidden_states=embeds[index],
        return_dict=False,
        **conditions,
    )[0]
    return pred, noise - x0


def frame_levels(n: int, generator: torch.Generator) -> torch.Tensor:
    """Noise levels (n, FRAMES), logit-normal: one per frame, or one per clip for `SHARED_LEVEL_FRACTION` of
    the clips."""
    sigma = torch.sigmoid(torch.randn(n, FRAMES, generator=generator))
    shared = torch.rand(n, generator=generator) < SHARED_LEVEL_FRACTION
    return torch.where(shared[:, None], sigma[:, :1].expand(-1, FRAMES), sigma)


@torch.no_grad()
def held_out_loss(pipe: WanPipeline, digits, labels, seed: int) -> float:
    """Velocity loss on 128 clips of held-out digits at fixed noise, levels and prompts (for the log only)."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.arange(min(128, digits.shape[0]))
    x0, clip_labels, motions = random_clips(digits, labels, index, gen)
    prompts = sample_prompts(clip_labels, motions, 0.0, gen)
    trained_modules(pipe).eval()
    pred, target = velocity(pipe, x0, torch.randn(x0.shape, generator=gen), frame_levels(x0.shape[0], gen), prompts)
    return F.mse_loss(pred, target).item()


def train(args: argparse.Namespace) -> dict:
    digits, labels, held_digits, held_labels = native_digits()

    def batch_loss(pipe, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Velocity loss on clips of digits `idx` with random motions and starts, the prompt dropped to ""
        with `--prompt-dropout`."""
        x0, clip_labels, motions = random_clips(digits, labels, idx, gen)
        prompts = sample_prompts(clip_labels, motions, args.prompt_dropout, gen)
        noise = torch.randn(x0.shape, generator=gen)
        pred, target = velocity(pipe, x0, noise, frame_levels(x0.shape[0], gen), prompts)
        return F.mse_loss(pred, target)

    def held_out(ema_pipe) -> float:
        return held_out_loss(ema_pipe, held_digits, held_labels, args.seed)

    items = digits.shape[0]
    return train_text_model(
        args, build_pipeline, trained_modules, batch_loss, held_out, items, CALL_DEFAULTS, example_prompts()
    )


def main(argv: list[str] | None = None) -> None:
    defaults = dict(steps=3000, batch_size=16, warmup=100, ema=0.998, dropout="prompt", threads=1, out=str(DEFAULT_OUT))
    train(parse_args(argv, __doc__, **defaults))


if __name__ == "__main__":
    main()
