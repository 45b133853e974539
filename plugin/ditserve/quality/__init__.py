"""Fidelity metrics for judging an acceleration on the embedded digits models.

Per image against the reference output: `psnr`, `ssim`. Per set of samples: `frechet_distance` on the
classifier's `features`, and `classifier_accuracy` for the requested labels.
"""

from ditserve.quality.classifier import DigitsClassifier, load_classifier, train_classifier
from ditserve.quality.frechet import classifier_accuracy, frechet_distance
from ditserve.quality.metrics import mean_finite, psnr, ssim

__all__ = [
    "DigitsClassifier",
    "classifier_accuracy",
    "frechet_distance",
    "load_classifier",
    "mean_finite",
    "psnr",
    "ssim",
    "train_classifier",
]
