"""Quality of the digit-scenes model: per-place digit accuracy and Fréchet distance per crop.

A scene is judged by cutting it into its four 16×16 places (models/digits/scenes.py) and asking the
shipped digits classifier whether each place shows the digit its prompt named there; the Fréchet
distance compares the crops' classifier features with the held-out digits, beside the floor (the
real training split against the held-out one). The prompts are `example_labels` in both formats, so
every digit is asked for in every place equally often.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ditserve.models.digits.scene_prompts import FORMATS, example_labels, prompt_for
from ditserve.models.digits.scenes import PLACES, crops
from ditserve.quality.classifier import load_classifier
from ditserve.quality.report import frechet_to_held_out


@dataclass
class ScenesReport:
    model: str
    sampler: str
    steps: int
    guidance_scale: float
    scenes: int
    accuracy: float
    """Mean over all places of all scenes."""
    per_place_accuracy: dict[str, float]
    per_format_accuracy: dict[str, float]
    scene_accuracy: float
    """Fraction of scenes with all four places right."""
    frechet_to_held_out: float
    frechet_floor_train_vs_held_out: float
    seconds: float


def generate_scenes(engine, scenes: int, per_prompt: int, steps: int | None, guidance: float | None, seed: int):
    """`per_prompt` images for each of `scenes` example scenes in each format (request k uses seed seed + k):
    images (N, 1, 32, 32) in [0, 1], labels (N, 4) and each image's format."""
    from ditserve.request import GenerationRequest

    images, labels, formats = [], [], []
    for k, (scene, fmt) in enumerate((s, f) for s in example_labels(scenes) for f in FORMATS):
        request = GenerationRequest(
            prompt=prompt_for(scene, fmt), num_images=per_prompt, steps=steps, guidance_scale=guidance, seed=seed + k
        )
        images.append(engine.generate(request).images)
        labels.append(torch.tensor([scene] * per_prompt))
        formats += [fmt] * per_prompt
    return torch.cat(images), torch.cat(labels), formats


@torch.no_grad()
def place_correct(images: torch.Tensor, labels: torch.Tensor, classifier=None) -> torch.Tensor:
    """(N, 4) bool: whether the classifier reads place p of scene n (images in [0, 1]) as labels[n, p]."""
    classifier = classifier if classifier is not None else load_classifier()
    digits = crops(images.float() * 2 - 1)
    predicted = classifier(digits.flatten(0, 1)).argmax(dim=1).view(labels.shape)
    return predicted == labels


def measure(engine, scenes: int = 20, per_prompt: int = 5, steps: int | None = None, guidance=None, seed: int = 0):
    """Generate, classify and compare; returns the report, the images and their labels."""
    started = time.perf_counter()
    images, labels, formats = generate_scenes(engine, scenes, per_prompt, steps, guidance, seed)
    seconds = time.perf_counter() - started
    classifier = load_classifier()
    correct = place_correct(images, labels, classifier)
    by_format = torch.tensor([FORMATS.index(f) for f in formats])
    frechet, floor = frechet_to_held_out(classifier, crops(images * 2 - 1).flatten(0, 1))
    report = ScenesReport(
        model=engine.config.model.name,
        sampler=engine.config.plan.sampler.name,
        steps=steps or engine.config.plan.sampler.steps,
        guidance_scale=guidance if guidance is not None else engine.config.model.guidance_scale,
        scenes=len(labels),
        accuracy=correct.float().mean().item(),
        per_place_accuracy={place: correct[:, p].float().mean().item() for p, place in enumerate(PLACES)},
        per_format_accuracy={f: correct[by_format == i].float().mean().item() for i, f in enumerate(FORMATS)},
        scene_accuracy=correct.all(dim=1).float().mean().item(),
        frechet_to_held_out=frechet,
        frechet_floor_train_vs_held_out=floor,
        seconds=seconds,
    )
    return report, images, labels
