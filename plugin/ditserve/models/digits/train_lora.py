"""Train the "bold" LoRA of the embedded digits DiT: `python -m ditserve.models.digits.train_lora`.

The adapter teaches digits-dit to draw bolder strokes: it trains on the same digits, each stroke widened by
one native pixel to the right (a 1×2 max-pool of the 8×8 digit, as a bold typeface thickens its vertical
strokes), re-encoded as 2×2 blocks like the base model's data. Dilating the 16×16 images instead split the
blocks a patch-2 token is made of, and in every direction it turned the digits into blobs. It trains with the base
model's own loss and per-sample label dropout (`train.py`), so the guided and the unguided branch both learn it.
Only the LoRA layers (rank 8 on the attention projections and the feed-forward layers) train; the base weights
stay as shipped. The EMA of the adapter is saved in diffusers/PEFT format (`save_lora_adapter`) as
`digits-dit/loras/bold/pytorch_lora_weights.safetensors`, where the engine finds it at load.

After training, the script measures what the adapter does, from the served engine with and without it (same
classes, seeds and steps): the mean ink per image and the classifier's accuracy, written into the adapter's
`training.json`. Seeded; the defaults take about 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiTTransformer2DModel

from ditserve.lora import LORA_DIR, peft_capable
from ditserve.models.digits import train
from ditserve.models.digits.data import CLASS_NAMES, UPSAMPLE, load_split, to_native
from ditserve.models.digits.training import fit, parse_args, repeatable

NAME = "bold"
DEFAULT_OUT = train.DEFAULT_OUT / LORA_DIR / NAME
RANK = 8
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
"""The linear layers of every block that get a LoRA; the adaLN modulation keeps the base model's."""


def thicken(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, 16, 16) digits in [-1, 1] with every stroke widened by one native pixel to the right."""
    native = to_native(images)
    bold = F.max_pool2d(F.pad(native, (1, 0), value=-1.0), kernel_size=(1, 2), stride=1)
    return bold.repeat_interleave(UPSAMPLE, dim=2).repeat_interleave(UPSAMPLE, dim=3)


def train_lora(args: argparse.Namespace) -> dict:
    """Train the adapter on the thickened training split; save its EMA and the training record under `args.out`."""
    from peft import LoraConfig

    repeatable(args)
    split = load_split()
    images, held_out_images = thicken(split.train_images), thicken(split.held_out_images)
    model = DiTTransformer2DModel.from_pretrained(train.DEFAULT_OUT, subfolder="transformer").requires_grad_(False)
    for block in model.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0  # the label is dropped once per sample below
    peft_capable(model).add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGETS), NAME)
    ema = copy.deepcopy(model).requires_grad_(False)
    scheduler = DDPMScheduler(**train.SCHEDULER_CONFIG)

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x0, labels = images[idx], split.train_labels[idx].clone()
        labels[torch.rand(args.batch_size, generator=gen) < args.label_dropout] = train.NULL_CLASS
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), generator=gen)
        pred = model(scheduler.add_noise(x0, noise, t), timestep=t, class_labels=labels).sample
        return F.mse_loss(pred, noise)

    def held_out() -> float:
        return train.held_out_loss(ema, scheduler, held_out_images, split.held_out_labels, args.seed)

    record = fit(args, model, ema, batch_loss, held_out, images.shape[0], "label")
    record |= {
        "base": "builtin:digits-dit",
        "rank": RANK,
        "targets": TARGETS,
        "data": "training split, strokes widened by one native pixel",
    }
    out = Path(args.out)
    ema.save_lora_adapter(out, adapter_name=NAME)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


@torch.no_grad()
def measure_effect(out: Path, per_class: int, steps: int, seed: int = 0) -> dict:
    """What the adapter does to served images: ink and classifier accuracy without and with it (same seeds)."""
    from ditserve.config import load_config
    from ditserve.engine import Engine
    from ditserve.quality.classifier import accuracy, load_classifier
    from ditserve.request import GenerationRequest

    engine = Engine(load_config("builtin:digits-dit"))
    classifier = load_classifier()
    labels = torch.arange(len(CLASS_NAMES)).repeat_interleave(per_class)
    effect: dict = {"per_class": per_class, "steps": steps, "guidance": engine.config.model.guidance_scale}
    for lora in (None, out.name):
        batch = [
            GenerationRequest(class_label=c, num_images=per_class, steps=steps, seed=seed + 1000 * c, lora=lora)
            for c in range(len(CLASS_NAMES))
        ]
        images = torch.cat([result.images for result in engine.generate_batch(batch)])
        key = lora or "none"
        effect[f"{key}_mean_ink"] = round(images.mean().item(), 4)
        effect[f"{key}_accuracy"] = round(accuracy(classifier, images * 2 - 1, labels), 4)
    effect["ink_ratio"] = round(effect[f"{out.name}_mean_ink"] / effect["none_mean_ink"], 3)
    return effect


def main(argv: list[str] | None = None) -> None:
    defaults = dict(
        steps=400, batch_size=32, lr=2e-3, warmup=30, ema=0.99, dropout="label", threads=2, out=str(DEFAULT_OUT)
    )
    args = parse_args(argv, __doc__, **defaults)
    record = train_lora(args)
    record["effect"] = measure_effect(Path(args.out), per_class=20, steps=50)
    (Path(args.out) / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["effect"]), flush=True)


if __name__ == "__main__":
    main()
