"""The digits classifier that judges generated samples: `python -m ditserve.quality.classifier` retrains it.

Its logits give the class accuracy of samples generated for a requested label, and its penultimate
layer gives the features for the Fréchet distance (an Inception score/FID in miniature). It sees the
native 8×8 digit: 16×16 inputs are average-pooled first, so it judges what the DiT was trained to draw,
not the 2×2 block structure of the encoding. It trains on the training split only, with random ±1 pixel
shifts so that it does not hinge on exact positions that generated samples need not reproduce.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ditserve.models.digits.data import CLASS_NAMES, IMAGE_SIDE, load_split, to_native

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "digits-classifier.safetensors"
DEFAULT_RECORD = WEIGHTS_DIR / "digits-classifier.json"
NATIVE_SIDE = 8
FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
    """A small CNN on 8×8 digits: two 3×3 convolutions, a 2×2 max-pool, a 64-unit layer, 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.hidden = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, len(CLASS_NAMES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activations (N, 64), the embedding used for the Fréchet distance."""
        x = _native(x)
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.hidden(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, 10) for (N, 1, 16, 16) or (N, 1, 8, 8) images in [-1, 1]."""
        return self.head(self.features(x))


def _native(x: torch.Tensor) -> torch.Tensor:
    side = x.shape[-1]
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[-2] != side or side not in (IMAGE_SIDE, NATIVE_SIDE):
        raise ValueError(
            f"expected (N, 1, {IMAGE_SIDE}, {IMAGE_SIDE}) or (N, 1, {NATIVE_SIDE}, {NATIVE_SIDE}) images in [-1, 1], "
            f"got {tuple(x.shape)}"
        )
    return to_native(x) if side == IMAGE_SIDE else x.float()


def load_classifier(path: str | Path = DEFAULT_WEIGHTS) -> DigitsClassifier:
    """The shipped classifier on the CPU, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier weights at {path}; run `python -m ditserve.quality.classifier`")
    model = DigitsClassifier()
    model.load_state_dict(load_file(path))
    return model.eval()


def random_shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Move each 8×8 image by -1, 0 or +1 pixel on each axis, filling the uncovered edge with background."""
    n = images.shape[0]
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(NATIVE_SIDE))[:, None, :, None].expand(n, 1, NATIVE_SIDE, NATIVE_SIDE + 2)
    cols = (dx[:, None] + torch.arange(NATIVE_SIDE))[:, None, None, :].expand(n, 1, NATIVE_SIDE, NATIVE_SIDE)
    return padded.gather(2, rows).gather(3, cols)


@torch.no_grad()
def accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of images whose top logit is their label."""
    return (model(images).argmax(dim=1) == labels).double().mean().item()


def train_classifier(
    seed: int = 0, epochs: int = 30, batch_size: int = 64, lr: float = 2e-3
) -> tuple[DigitsClassifier, dict]:
    """Train on the training split only; returns the model in eval mode and a record of how it was made.

    Seeded: the initial weights, the batch order and the shifts all come from `seed`, and the global RNG
    is restored afterwards. The learning rate decays along a cosine to zero over the epochs.
    """
    split = load_split()
    images, labels = to_native(split.train_images), split.train_labels
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-images.shape[0] // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(images.shape[0], generator=generator).split(batch_size):
            loss = F.cross_entropy(model(random_shift(images[idx], generator)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    record = {
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "augmentation": "random shift of -1, 0 or +1 native pixels per axis",
        "train_images": images.shape[0],
        "seconds": round(time.perf_counter() - start, 1),
        "train_accuracy": round(accuracy(model, split.train_images, split.train_labels), 4),
        "held_out_accuracy": round(accuracy(model, split.held_out_images, split.held_out_labels), 4),
    }
    return model, record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, record = train_classifier(seed=args.seed, epochs=args.epochs)
    record["threads"] = args.threads
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
