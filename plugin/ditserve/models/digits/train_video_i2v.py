"""Fine-tune digits-video into the image-to-video model: `python -m ditserve.models.digits.train_video_i2v`.

Starts from the text-to-video checkpoint (models/digits/digits-video) with the image layers added so that the
start is that model exactly (video_i2v.build_from_t2v), and trains everything (transformer, T5 encoder, the new
CLIP image encoder) as train_video.py does: the same clips, rectified-flow velocity loss, diffusion-forcing
noise levels, EMA, through `training.train_text_model`. What changes is the conditioning: each clip's first
frame, clean, goes to the image encoder, and the prompt names only the motion ("moving left", video_i2v.py).
For a whole batch, with probability `IMAGE_DROPOUT`, the image is left out, so the model without its image
term stays a trained model (the state Faster I2V, video/faster_i2v.py, drops towards). Seeded and deterministic
on a given machine; writes models/digits/digits-video-i2v (`--t2v DIR` starts from another text-to-video
checkpoint, a pilot's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import WanImageToVideoPipeline
from torch import nn

from ditserve.models.digits.moving import native_digits, random_clips
from ditserve.models.digits.train_video import CALL_DEFAULTS, frame_levels, velocity
from ditserve.models.digits.train_video import DEFAULT_OUT as T2V_DIR
from ditserve.models.digits.training import parse_args, train_text_model
from ditserve.models.digits.video_i2v import MODEL_DIR, build_from_t2v, encode_first_frame, motion_prompt, text_pipeline
from ditserve.models.digits.video_prompts import example_clips

IMAGE_DROPOUT = 0.1
"""The probability that a batch trains without its first frames."""


def trained_modules(pipe: WanImageToVideoPipeline) -> nn.ModuleDict:
    return nn.ModuleDict(
        {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder, "image_encoder": pipe.image_encoder}
    )


def motion_prompts(motions: torch.Tensor, drop: float, generator: torch.Generator) -> list[str]:
    """One motion prompt per clip; with probability `drop` the empty one instead."""
    dropped = torch.rand(motions.shape[0], generator=generator) < drop
    return ["" if skip else motion_prompt(m) for m, skip in zip(motions.tolist(), dropped.tolist(), strict=True)]


def image_velocity(pipe, x0, noise, sigma, prompts: list[str], with_image: bool):
    """train_video.velocity with the clips' first frames (clean) as the image condition when `with_image`."""
    image = encode_first_frame(pipe, x0[:, :, 0]) if with_image else None
    return velocity(text_pipeline(pipe), x0, noise, sigma, prompts, encoder_hidden_states_image=image)


@torch.no_grad()
def held_out_loss(pipe: WanImageToVideoPipeline, digits, labels, seed: int) -> float:
    """Velocity loss on 128 clips of held-out digits with their first frames, at fixed noise, levels, prompts."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.arange(min(128, digits.shape[0]))
    x0, _, motions = random_clips(digits, labels, index, gen)
    prompts = motion_prompts(motions, 0.0, gen)
    trained_modules(pipe).eval()
    noise, sigma = torch.randn(x0.shape, generator=gen), frame_levels(x0.shape[0], gen)
    pred, target = image_velocity(pipe, x0, noise, sigma, prompts, with_image=True)
    return F.mse_loss(pred, target).item()


def train(args: argparse.Namespace) -> dict:
    digits, labels, held_digits, held_labels = native_digits()

    def batch_loss(pipe, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Velocity loss on clips of digits `idx` with random motions and starts, given their first frames
        (but for `IMAGE_DROPOUT` of the batches), the prompt dropped to "" with `--prompt-dropout`."""
        x0, _, motions = random_clips(digits, labels, idx, gen)
        prompts = motion_prompts(motions, args.prompt_dropout, gen)
        noise, sigma = torch.randn(x0.shape, generator=gen), frame_levels(x0.shape[0], gen)
        with_image = torch.rand((), generator=gen).item() >= IMAGE_DROPOUT
        pred, target = image_velocity(pipe, x0, noise, sigma, prompts, with_image)
        return F.mse_loss(pred, target)

    def held_out(ema_pipe) -> float:
        return held_out_loss(ema_pipe, held_digits, held_labels, args.seed)

    examples = [motion_prompt(motion) for _, motion in example_clips()]
    return train_text_model(
        args,
        lambda: build_from_t2v(args.t2v),
        trained_modules,
        batch_loss,
        held_out,
        digits.shape[0],
        CALL_DEFAULTS,
        examples,
    )


def main(argv: list[str] | None = None) -> None:
    defaults = dict(steps=500, batch_size=16, warmup=25, ema=0.99, dropout="prompt", threads=1, out=str(MODEL_DIR))
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--t2v", type=Path, default=T2V_DIR)
    known, rest = source.parse_known_args(argv)
    args = parse_args(rest, __doc__, **defaults)
    args.t2v = known.t2v
    train(args)


if __name__ == "__main__":
    main()
