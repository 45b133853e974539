"""How close a setting's images stay to the unaccelerated ones, and whether they are still the asked-for digits:
PSNR/SSIM against the reference images of the same seeds, classifier accuracy, and Fréchet distance to the
held-out digits. Shared by the benchmarks that judge class-conditional digit models."""

from __future__ import annotations

import torch

from ditserve.models.digits.data import load_split
from ditserve.quality import frechet_distance, load_classifier, mean_finite, psnr, ssim


class Judge:
    """Fidelity of images against `reference` (same seeds, unaccelerated) and the held-out digits; `labels` are the
    classes the images were asked for."""

    def __init__(self, reference: torch.Tensor, labels: torch.Tensor) -> None:
        self.classifier = load_classifier()
        self.reference, self.labels = reference, labels
        with torch.no_grad():
            self.held_out = self.classifier.features(load_split().held_out_images)

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            accuracy = (self.classifier(images).argmax(dim=1) == self.labels).float().mean().item()
            frechet = frechet_distance(self.classifier.features(images), self.held_out)
        return {
            "psnr": mean_finite(psnr(images, self.reference)),
            "ssim": ssim(images, self.reference).mean().item(),
            "accuracy": accuracy,
            "frechet": frechet,
        }
