"""Distribution-level fidelity in the classifier's feature space: Fréchet distance and class accuracy.

PSNR and SSIM compare an accelerated sample with the reference sample from the same noise; these two
ask instead whether a whole set of samples still looks like the digits (the Fréchet distance to the
held-out split, an FID in miniature) and still shows the requested digit (classifier accuracy).
"""

from __future__ import annotations

import numpy as np
import torch

from ditserve.quality.classifier import DigitsClassifier, accuracy, load_classifier


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets.

    ||mu_a - mu_b||² + Tr(Σa + Σb - 2 (Σa Σb)^½), in float64. The trace of the matrix square root is
    taken by eigen-decomposition rather than scipy's `sqrtm`: Tr((Σa Σb)^½) equals the sum of the square
    roots of the eigenvalues of Σa^½ Σb Σa^½, which is symmetric positive semi-definite, so `eigh` gives
    real eigenvalues even when a covariance is singular (dead ReLU units, fewer samples than dimensions),
    where `sqrtm` would return complex noise. Eigenvalues that rounding pushes slightly below zero count
    as zero, so a set against itself gives 0 only up to rounding (about 1e-8 of the covariance trace).
    """
    a, b = _as_float64(features_a), _as_float64(features_b)
    if a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"expected two (N, D) feature sets with N >= 2 and the same D, got {a.shape} and {b.shape}")
    mean_term = np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    sqrt_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a), 0.0, None)).sum()
    return float(mean_term + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)


def classifier_accuracy(
    images: torch.Tensor, labels: torch.Tensor, classifier: DigitsClassifier | None = None
) -> float:
    """The fraction of images the classifier (the shipped one by default) assigns to their label."""
    classifier = classifier if classifier is not None else load_classifier()
    device = next(classifier.parameters()).device
    return accuracy(classifier, images.to(device), labels.to(device))


def _as_float64(features: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"expected (N, D) features, got shape {features.shape}")
    return features


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
