"""Train the embedded many-token text-to-image model on digit scenes: `python -m ditserve.models.digits.train_scenes`.

The result is a PixArt-α pipeline directory (transformer/, text_encoder/, tokenizer/, scheduler/,
model_index.json) that the engine loads as `builtin:digits-scenes` through the `pixart` family:
prompt → T5 tokens → a tiny T5 encoder → PixArt transformer (self-attention over 256 image tokens,
cross-attention to the prompt) → a 32×32 scene of four digits (scenes.py; prompt formats in
scene_prompts.py: "7 3 / 1 9" or "seven top left, three top right, one bottom left, nine bottom
right"). It exists so that per-token and per-attention-layer caches have many tokens, spatial
structure and cross-attention to work on, which digits-dit and digits-flow (64 tokens) lack.
Seeded and deterministic on a given machine.

What it is: DDPM on a cosine schedule with v-prediction (Salimans & Ho, 2022), in pixel space (no VAE;
the adapter then works on pixels), without learned variance; the T5 encoder is trained with the
transformer from scratch. Why v and not PixArt's epsilon: the prompt only decides the image at high
noise, where the epsilon loss is nearly zero whatever the model draws (its weight is ᾱ relative to v's);
a 400-step pilot trained on epsilon had the same held-out loss with the right, the empty and a wrong
prompt, and drew no digits. The prompt is dropped to "" once per sample for classifier-free guidance.
Checkpoint pins in `call_defaults.json`: `max_sequence_length` (the prompts are short) and
`clean_caption` off (cleaning would strip the grid's slash).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
from torch import nn

from ditserve.models.digits import scenes
from ditserve.models.digits.data import load_split
from ditserve.models.digits.scene_prompts import MAX_TOKENS, build_tokenizer, example_prompts, sample_prompts
from ditserve.models.digits.t5_text import t5_encoder
from ditserve.models.digits.training import parse_args, train_text_model

DEFAULT_OUT = Path(__file__).parent / "digits-scenes"
TEXT_WIDTH = 64
CALL_DEFAULTS = {"max_sequence_length": MAX_TOKENS, "clean_caption": False}
"""Pipeline-call defaults this checkpoint needs (PixArt-α's are 120 tokens and caption cleaning)."""
TRANSFORMER_CONFIG = dict(
    sample_size=scenes.SCENE_SIDE,
    patch_size=2,
    in_channels=1,
    out_channels=1,
    num_layers=6,
    num_attention_heads=4,
    attention_head_dim=16,
    cross_attention_dim=64,
    caption_channels=TEXT_WIDTH,
    norm_type="ada_norm_single",
    num_embeds_ada_norm=1000,
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
"""digits-dit's schedule; DDPM's `clip_sample` (on by default) tells the samplers to clip x̂₀ to the pixel range,
which keeps guided pixel-space sampling from turning to speckle."""


def build_pipeline() -> PixArtAlphaPipeline:
    """The untrained pipeline: PixArt transformer (6 blocks, width 64, 256 image tokens) and a tiny T5."""
    tokenizer = build_tokenizer()
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=t5_encoder(tokenizer, TEXT_WIDTH, MAX_TOKENS),
        vae=None,
        transformer=PixArtTransformer2DModel(**TRANSFORMER_CONFIG),
        scheduler=DDPMScheduler(**SCHEDULER_CONFIG),
    )


def trained_modules(pipe: PixArtAlphaPipeline) -> nn.ModuleDict:
    return nn.ModuleDict({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder})


def predict(pipe: PixArtAlphaPipeline, noisy: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """The transformer's prediction (the velocity) for `noisy` at timesteps `t`, each row prompted by its prompt."""
    unique = list(dict.fromkeys(prompts))
    embeds, mask, _, _ = pipe.encode_prompt(unique, do_classifier_free_guidance=False, **CALL_DEFAULTS)
    index = torch.tensor([unique.index(p) for p in prompts])
    return pipe.transformer(
        noisy,
        encoder_hidden_states=embeds[index],
        encoder_attention_mask=mask[index],
        timestep=t,
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )[0]


def velocity_loss(pipe: PixArtAlphaPipeline, x0, prompts: list[str], gen: torch.Generator) -> torch.Tensor:
    """v-prediction loss at uniformly drawn timesteps of the pipeline's schedule (noise and timesteps from `gen`)."""
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
    pred = predict(pipe, pipe.scheduler.add_noise(x0, noise, t), t, prompts)
    return F.mse_loss(pred, pipe.scheduler.get_velocity(x0, noise, t))


@torch.no_grad()
def held_out_loss(pipe: PixArtAlphaPipeline, images, labels, seed: int) -> float:
    """v-prediction loss on 256 scenes of held-out digits at fixed noise, timesteps and prompts (for the log only)."""
    gen = torch.Generator().manual_seed(seed)
    x0, scene_labels = scenes.draw(images, labels, 256, gen)
    prompts = sample_prompts(scene_labels, 0.0, gen)
    trained_modules(pipe).eval()
    return velocity_loss(pipe, x0, prompts, gen).item()


def train(args: argparse.Namespace) -> dict:
    split = load_split()

    def batch_loss(pipe, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """v-prediction loss on scenes whose top-left digits are `idx` (the other three drawn from `gen`), the prompt
        dropped to "" with `--prompt-dropout`."""
        others = torch.randint(0, split.train_images.shape[0], (idx.shape[0], len(scenes.PLACES) - 1), generator=gen)
        chosen = torch.cat([idx[:, None], others], dim=1)
        x0, labels = scenes.compose(split.train_images[chosen]), split.train_labels[chosen]
        return velocity_loss(pipe, x0, sample_prompts(labels, args.prompt_dropout, gen), gen)

    def held_out(ema_pipe) -> float:
        return held_out_loss(ema_pipe, split.held_out_images, split.held_out_labels, args.seed)

    items = split.train_images.shape[0]
    return train_text_model(
        args, build_pipeline, trained_modules, batch_loss, held_out, items, CALL_DEFAULTS, example_prompts()
    )


def main(argv: list[str] | None = None) -> None:
    defaults = dict(steps=1100, batch_size=32, warmup=50, ema=0.995, dropout="prompt", threads=1, out=str(DEFAULT_OUT))
    train(parse_args(argv, __doc__, **defaults))


if __name__ == "__main__":
    main()
