"""How close a setting's images stay to the unaccelerated ones, and whether they are still the asked-for digits:
PSNR/SSIM against the reference images of the same seeds, classifier accuracy, and Fréchet distance to the
held-out digits. Shared by the benchmarks that judge the digit models; on digits-scenes the digits are each
scene's four places (per-place accuracy, Fréchet distance per crop)."""

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

    def digits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The digit images the classifier judges, and the digit each should show."""
        return images, self.labels

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        digits, labels = self.digits(images)
        with torch.no_grad():
            accuracy = (self.classifier(digits).argmax(dim=1) == labels).float().mean().item()
            frechet = frechet_distance(self.classifier.features(digits), self.held_out)
        return {
            "psnr": mean_finite(psnr(images, self.reference)),
            "ssim": ssim(images, self.reference).mean().item(),
            "accuracy": accuracy,
            "frechet": frechet,
        }


class ScenesJudge(Judge):
    """`Judge` for digits-scenes: `labels` are (N, 4), the digit asked for in each place; the classifier judges each
    scene's four 16×16 places (`crops`), so accuracy is per place and the Fréchet distance is per crop."""

    def digits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ditserve.models.digits.scenes import crops

        return crops(images).flatten(0, 1), self.labels.flatten()
