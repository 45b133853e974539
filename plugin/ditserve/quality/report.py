"""The embedded model's baseline quality: `python -m ditserve.quality.report`.

Generates `per_class` samples of every digit with the served plan (50 DDIM steps, guidance 4 for the
shipped config), then reports the classifier's accuracy on them and the Fréchet distance of their
features to the held-out digits, next to the floor: the distance between the real training split and
the held-out split. `benchmarks/quality_baseline.py` writes the same figures to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import torch

from ditserve.models.digits.data import CLASS_NAMES, load_split
from ditserve.quality.classifier import load_classifier
from ditserve.quality.frechet import frechet_distance


@dataclass
class BaselineReport:
    model: str
    sampler: str
    steps: int
    guidance_scale: float
    samples: int
    accuracy: float
    per_class_accuracy: list[float]
    frechet_to_held_out: float
    frechet_floor_train_vs_held_out: float
    seconds: float


def generate_per_class(engine, per_class: int, steps: int | None, guidance: float | None, seed: int):
    """`per_class` samples of each class (class c uses seeds seed + 1000·c + k); images in [0, 1] and labels.

    A class-conditional model gets the class id, a text-to-image one (digits-flow) the class name as prompt."""
    from ditserve.request import GenerationRequest

    text = engine.adapter.conditioning == "text"
    images, labels = [], []
    for label in range(len(CLASS_NAMES)):
        condition = {"prompt": CLASS_NAMES[label]} if text else {"class_label": label}
        request = GenerationRequest(
            **condition, num_images=per_class, steps=steps, guidance_scale=guidance, seed=seed + 1000 * label
        )
        images.append(engine.generate(request).images)
        labels.append(torch.full((per_class,), label))
    return torch.cat(images), torch.cat(labels)


def measure(engine, per_class: int = 50, steps: int | None = 50, guidance: float | None = 4.0, seed: int = 0):
    """Generate, classify and compare; returns the report and the images (for a grid)."""
    started = time.perf_counter()
    images, labels = generate_per_class(engine, per_class, steps, guidance, seed)
    seconds = time.perf_counter() - started
    classifier = load_classifier()
    signed = images * 2 - 1
    with torch.no_grad():
        predicted = classifier(signed).argmax(dim=1)
    correct = predicted == labels
    frechet, floor = frechet_to_held_out(classifier, signed)
    report = BaselineReport(
        model=engine.config.model.name,
        sampler=engine.config.plan.sampler.name,
        steps=steps or engine.config.plan.sampler.steps,
        guidance_scale=guidance if guidance is not None else engine.config.model.guidance_scale,
        samples=len(labels),
        accuracy=correct.float().mean().item(),
        per_class_accuracy=[correct[labels == c].float().mean().item() for c in range(len(CLASS_NAMES))],
        frechet_to_held_out=frechet,
        frechet_floor_train_vs_held_out=floor,
        seconds=seconds,
    )
    return report, images, labels


@torch.no_grad()
def frechet_to_held_out(classifier, digits: torch.Tensor) -> tuple[float, float]:
    """The Fréchet distance of `digits`' classifier features ((N, 1, 16, 16) in [-1, 1]) to the held-out digits',
    and the floor: the real training split's distance to them."""
    split = load_split()
    held_out = classifier.features(split.held_out_images)
    floor = frechet_distance(classifier.features(split.train_images), held_out)
    return frechet_distance(classifier.features(digits), held_out), floor


def to_markdown(report: BaselineReport) -> str:
    per_class = " | ".join(f"{a:.2f}" for a in report.per_class_accuracy)
    return "\n".join(
        [
            f"# Quality baseline: {report.model}",
            "",
            f"{report.samples} samples ({report.samples // len(CLASS_NAMES)} per class), sampler `{report.sampler}`, "
            f"{report.steps} steps, guidance {report.guidance_scale}, fixed seeds. "
            "Produced by `python benchmarks/quality_baseline.py`.",
            "",
            "| metric | value |",
            "| --- | --- |",
            f"| classifier accuracy on class-conditioned samples | {report.accuracy:.3f} |",
            f"| Fréchet distance, samples vs held-out digits | {report.frechet_to_held_out:.2f} |",
            f"| Fréchet distance floor, real train split vs held-out | {report.frechet_floor_train_vs_held_out:.2f} |",
            f"| generation wall time (this machine) | {report.seconds:.1f} s |",
            "",
            "Per-class accuracy (0–9): " + per_class,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    from ditserve.engine import Engine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="builtin:digits-dit")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    report, _, _ = measure(Engine.from_config(args.config), args.per_class, args.steps, args.guidance_scale, args.seed)
    print(json.dumps(asdict(report), indent=1) if args.json else to_markdown(report))


if __name__ == "__main__":
    main()
