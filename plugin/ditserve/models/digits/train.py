"""Train the embedded class-conditional pixel-space DiT on the digits: `python -m ditserve.models.digits.train`.

The result is a diffusers checkpoint directory (transformer/ + scheduler/ + labels.json) that the engine
loads as `builtin:digits-dit`. Seeded and deterministic on a given machine; the defaults take about
25 minutes on 2 CPU cores.

Classifier-free guidance: diffusers' DiT gives every block its own label embedder, and in train mode
each drops labels independently, so a fully unconditional pass would almost never be trained. The
label is therefore dropped once per sample here (to the null class 10) and the built-in dropout is off.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiTTransformer2DModel
from torch import nn

from ditserve.models.digits.data import CLASS_NAMES, IMAGE_SIDE, load_split
from ditserve.models.digits.training import fit, parse_args, repeatable

DEFAULT_OUT = Path(__file__).parent / "digits-dit"
NUM_CLASSES = len(CLASS_NAMES)
NULL_CLASS = NUM_CLASSES
"""diffusers' label embedder keeps one extra row, index `num_classes`, for the unconditional class."""

TRANSFORMER_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=1,
    out_channels=1,
    num_layers=6,
    sample_size=IMAGE_SIDE,
    patch_size=2,
    num_embeds_ada_norm=NUM_CLASSES,
    norm_type="ada_norm_zero",
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


def build_transformer() -> DiTTransformer2DModel:
    """A 2.1M-parameter DiT: 16×16×1 input, patch 2 (64 tokens), width 128, 4 heads, depth 6."""
    model = DiTTransformer2DModel(**TRANSFORMER_CONFIG)
    for block in model.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0  # we drop labels once per sample instead
    return model


@torch.no_grad()
def held_out_loss(model: nn.Module, scheduler: DDPMScheduler, images, labels, seed: int) -> float:
    """Denoising loss on the held-out split at fixed noise and timesteps (for the log, never for training)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (images.shape[0],), generator=gen)
    noisy = scheduler.add_noise(images, noise, t)
    model.eval()
    pred = model(noisy, timestep=t, class_labels=labels).sample
    return F.mse_loss(pred, noise).item()


def train(
    args: argparse.Namespace, build: Callable[[], nn.Module] = build_transformer, subfolder: str = "transformer"
) -> dict:
    """Train the model `build` makes (default: the DiT) with the epsilon loss and per-sample label dropout, and
    save its EMA in `subfolder` of `args.out`. digits-unet (train_unet.py) trains through here too."""
    repeatable(args)
    split = load_split()
    model = build()
    ema = copy.deepcopy(model).requires_grad_(False)
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Epsilon loss at random timesteps, the label dropped to the null class with `--label-dropout`."""
        x0, labels = split.train_images[idx], split.train_labels[idx].clone()
        labels[torch.rand(args.batch_size, generator=gen) < args.label_dropout] = NULL_CLASS
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), generator=gen)
        pred = model(scheduler.add_noise(x0, noise, t), timestep=t, class_labels=labels).sample
        return F.mse_loss(pred, noise)

    def held_out() -> float:
        return held_out_loss(ema, scheduler, split.held_out_images, split.held_out_labels, args.seed)

    record = fit(args, model, ema, batch_loss, held_out, split.train_images.shape[0], "label")
    save(ema, scheduler, Path(args.out), record, subfolder)
    return record


def save(model: nn.Module, scheduler: DDPMScheduler, out: Path, record: dict, subfolder: str = "transformer") -> None:
    """Write the checkpoint in diffusers' layout (the model in `subfolder`) plus the label names and the training
    record."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / subfolder, safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    id2label = {str(i): f"{name}, {i}" for i, name in enumerate(CLASS_NAMES)}
    (out / "labels.json").write_text(json.dumps({"id2label": id2label, "null_class": NULL_CLASS}, indent=1) + "\n")
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    defaults = dict(steps=2000, batch_size=128, warmup=100, ema=0.999, dropout="label", threads=2, out=str(DEFAULT_OUT))
    train(parse_args(argv, __doc__, **defaults))


if __name__ == "__main__":
    main()
