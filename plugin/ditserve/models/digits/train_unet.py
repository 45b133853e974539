"""Train the embedded class-conditional pixel-space U-Net on the digits: `python -m ditserve.models.digits.train_unet`.

The result is a diffusers checkpoint directory (unet/ + scheduler/ + labels.json) that the engine loads as
`builtin:digits-unet`: the network DeepCache (caching/deepcache.py) was made for, beside digits-dit. Same
data, resolution (16×16, one channel), noise schedule, epsilon loss, label dropout to the null class 10
and training loop as digits-dit (train.py's `train`, which this calls with the U-Net); seeded and
deterministic on a given machine. The defaults — 1000 steps of batch 64, EMA 0.995, one torch thread (on a
shared 2-core machine two threads per process collapse under load) — took 12 minutes on this machine while
other work shared its cores (`training.json`: held-out loss 0.054).

The U-Net is diffusers' `UNet2DModel` with a class embedding (11 rows: the ten digits and the null class,
added to the timestep embedding): three levels at 16×16, 8×8 and 4×4 (32, 48, 64 channels), one ResNet per
level on the way down and two on the way up, self-attention at 8×8 and in the middle block; 0.93M
parameters, 3.7 MB as float32.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import UNet2DModel

from ditserve.models.digits.data import IMAGE_SIDE
from ditserve.models.digits.train import NUM_CLASSES, train
from ditserve.models.digits.training import parse_args

DEFAULT_OUT = Path(__file__).parent / "digits-unet"

UNET_CONFIG = dict(
    sample_size=IMAGE_SIDE,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 48, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=16,
    num_class_embeds=NUM_CLASSES + 1,
)
"""`num_class_embeds` keeps one row past the digits for the unconditional (null) class, as digits-dit does."""


def build_unet() -> UNet2DModel:
    """The 0.93M-parameter class-conditional U-Net (16×16×1 in and out)."""
    return UNet2DModel(**UNET_CONFIG)


def main(argv: list[str] | None = None) -> None:
    defaults = dict(steps=1000, batch_size=64, warmup=50, ema=0.995, dropout="label", threads=1, out=str(DEFAULT_OUT))
    train(parse_args(argv, __doc__, **defaults), build_unet, "unet")


if __name__ == "__main__":
    main()
