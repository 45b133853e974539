"""Train the embedded text-to-image flow model on the digits: `python -m ditserve.models.digits.train_flow`.

The result is a Stable Diffusion 3 pipeline directory (transformer/, text_encoder/, text_encoder_2/,
tokenizer/, tokenizer_2/, scheduler/, model_index.json) that the engine loads as `builtin:digits-flow`
through the `sd3` family: prompt → CLIP tokens → two tiny CLIP text encoders → MMDiT → 16×16 pixels.
Seeded and deterministic on a given machine.

What it is: rectified flow (Liu et al., 2022; Esser et al., 2024, "Scaling Rectified Flow Transformers
for High-Resolution Image Synthesis"): x_t = (1 − σ)·x₀ + σ·ε, the transformer predicts the velocity
ε − x₀ at timestep 1000·σ, and σ is drawn logit-normally as in SD3. The text encoders are trained with
the transformer from scratch. Pixel space (no VAE) and no T5: SD3's pipeline then fills T5's place with
zero tokens, `max_sequence_length` of them, so the checkpoint pins that to 0 in `call_defaults.json`
(training and serving both encode prompts with the pipeline's own `encode_prompt`, so they agree).
The prompt is dropped to "" once per sample for classifier-free guidance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from torch import nn

from ditserve.models.digits.data import IMAGE_SIDE, load_split
from ditserve.models.digits.prompts import (
    MAX_TOKENS,
    TEMPLATES,
    build_tokenizer,
    example_prompts,
    prompt_for,
    sample_prompts,
)
from ditserve.models.digits.training import parse_args, train_text_model

DEFAULT_OUT = Path(__file__).parent / "digits-flow"
TEXT_WIDTH = 64
"""Each CLIP's width; SD3 concatenates the two CLIPs' token features (and their pooled outputs)."""
CALL_DEFAULTS = {"max_sequence_length": 0}
"""Pipeline-call defaults this checkpoint needs: no T5, so no zero tokens in its place."""
TRANSFORMER_CONFIG = dict(
    sample_size=IMAGE_SIDE,
    patch_size=2,
    in_channels=1,
    out_channels=1,
    num_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=2 * TEXT_WIDTH,
    caption_projection_dim=128,
    pooled_projection_dim=2 * TEXT_WIDTH,
    pos_embed_max_size=IMAGE_SIDE // 2,
    qk_norm="rms_norm",
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)


def build_text_encoder(tokenizer) -> nn.Module:
    """A 2-layer CLIP text encoder with projection, width `TEXT_WIDTH`, over the digits vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config)


def build_pipeline() -> StableDiffusion3Pipeline:
    """The untrained pipeline (2.5 M parameters): MMDiT (4 joint blocks, width 128, 64 image tokens), two tiny CLIPs."""
    tokenizer = build_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**TRANSFORMER_CONFIG),
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=None,
        text_encoder=build_text_encoder(tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=build_text_encoder(tokenizer),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def trained_modules(pipe: StableDiffusion3Pipeline) -> nn.ModuleDict:
    return nn.ModuleDict(
        {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    )


def velocity(pipe: StableDiffusion3Pipeline, x0, noise, sigma, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's velocity at x_t = (1 − σ)x₀ + σε for `prompts`, and the target ε − x₀."""
    unique = list(dict.fromkeys(prompts))
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=unique, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False, **CALL_DEFAULTS
    )
    index = torch.tensor([unique.index(p) for p in prompts])
    s = sigma.view(-1, 1, 1, 1)
    pred = pipe.transformer(
        hidden_states=(1 - s) * x0 + s * noise,
        timestep=sigma * SCHEDULER_CONFIG["num_train_timesteps"],
        encoder_hidden_states=embeds[index],
        pooled_projections=pooled[index],
        return_dict=False,
    )[0]
    return pred, noise - x0


def logit_normal(n: int, generator: torch.Generator) -> torch.Tensor:
    """σ = sigmoid(u), u ~ N(0, 1): SD3's timestep density, weighted towards the middle of the path."""
    return torch.sigmoid(torch.randn(n, generator=generator))


@torch.no_grad()
def held_out_loss(pipe: StableDiffusion3Pipeline, images, labels, seed: int) -> float:
    """Flow-matching loss on the held-out split at fixed noise, σ and prompts (for the log only)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen)
    sigma = logit_normal(images.shape[0], gen)
    prompts = [prompt_for(int(label), i % len(TEMPLATES)) for i, label in enumerate(labels.tolist())]
    trained_modules(pipe).eval()
    pred, target = velocity(pipe, images, noise, sigma, prompts)
    return F.mse_loss(pred, target).item()


def train(args: argparse.Namespace) -> dict:
    split = load_split()

    def batch_loss(pipe, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Velocity loss at logit-normal σ, the prompt dropped to "" with `--prompt-dropout`."""
        x0 = split.train_images[idx]
        prompts = sample_prompts(split.train_labels[idx], args.prompt_dropout, gen)
        noise = torch.randn(x0.shape, generator=gen)
        pred, target = velocity(pipe, x0, noise, logit_normal(args.batch_size, gen), prompts)
        return F.mse_loss(pred, target)

    def held_out(ema_pipe) -> float:
        return held_out_loss(ema_pipe, split.held_out_images, split.held_out_labels, args.seed)

    items = split.train_images.shape[0]
    return train_text_model(
        args, build_pipeline, trained_modules, batch_loss, held_out, items, CALL_DEFAULTS, example_prompts()
    )


def main(argv: list[str] | None = None) -> None:
    defaults = dict(steps=1200, batch_size=64, warmup=50, ema=0.995, dropout="prompt", threads=1, out=str(DEFAULT_OUT))
    train(parse_args(argv, __doc__, **defaults))


if __name__ == "__main__":
    main()
