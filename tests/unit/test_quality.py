"""The fidelity metrics against closed forms, and the shipped classifier against the held-out split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ditserve.models.digits.data import load_split, to_native
from ditserve.quality import (
    classifier_accuracy,
    frechet_distance,
    load_classifier,
    mean_finite,
    psnr,
    ssim,
    train_classifier,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split():
    return load_split()


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def noisy(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (images + std * torch.randn(images.shape, generator=gen)).clamp(-1, 1)


def test_psnr_of_identical_images_is_inf(split):
    images = split.held_out_images[:8]
    assert torch.isinf(psnr(images, images.clone())).all()


def test_psnr_matches_closed_form(split):
    a = split.held_out_images[:8]
    b = noisy(a, 0.1)
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(a, b), 10 * torch.log10(4.0 / mse))
    offset = psnr(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.1))
    torch.testing.assert_close(offset, torch.full((2,), 10 * math.log10(4.0 / 0.01), dtype=torch.float64))


def test_mean_finite_skips_identical_images():
    assert mean_finite(torch.tensor([math.inf, 10.0, 20.0])) == pytest.approx(15.0)
    assert mean_finite(torch.tensor([math.inf, math.inf])) == math.inf


def test_ssim_is_one_for_identical_images_and_falls_with_noise(split):
    a = split.held_out_images[:16]
    torch.testing.assert_close(ssim(a, a.clone()), torch.ones(16, dtype=torch.float64))
    means = [ssim(a, noisy(a, std)).mean().item() for std in (0.05, 0.2, 0.5)]
    assert 1.0 > means[0] > means[1] > means[2]


def test_ssim_is_symmetric(split):
    a = split.held_out_images[:16]
    b = noisy(a, 0.3)
    torch.testing.assert_close(ssim(a, b), ssim(b, a))


def with_moments(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Samples whose sample mean and covariance are exactly `mean` and `cov`."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_of_a_set_with_itself_is_zero_and_symmetric(split, classifier):
    with torch.no_grad():
        a = classifier.features(split.held_out_images)
        b = classifier.features(noisy(split.held_out_images, 0.3))
    scale = np.trace(np.cov(a.double().numpy(), rowvar=False))  # about 640 for these features
    assert abs(frechet_distance(a, a)) < 1e-6 * scale
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_frechet_distance_matches_two_gaussians():
    mean_a, mean_b = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    cov_a = np.array([[2.0, 0.5], [0.5, 1.0]])
    cov_b = np.array([[1.0, -0.3], [-0.3, 3.0]])
    # For a 2×2 matrix M with positive eigenvalues, Tr(M^½) = sqrt(Tr M + 2 sqrt(det M)).
    product = cov_a @ cov_b
    trace_sqrt = math.sqrt(np.trace(product) + 2 * math.sqrt(np.linalg.det(product)))
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    fd = frechet_distance(with_moments(mean_a, cov_a, 500, 0), with_moments(mean_b, cov_b, 500, 1))
    assert fd == pytest.approx(expected, rel=1e-9)


def test_shipped_classifier_is_accurate_on_held_out(split, classifier):
    assert classifier_accuracy(split.held_out_images, split.held_out_labels, classifier) >= 0.95
    assert classifier_accuracy(split.held_out_images, split.held_out_labels) >= 0.95


def test_classifier_accepts_native_images(split, classifier):
    images = split.held_out_images[:32]
    with torch.no_grad():
        torch.testing.assert_close(classifier(to_native(images)), classifier(images))


def test_train_and_held_out_splits_are_disjoint(split):
    """sklearn's digits has no duplicate images, so disjoint rows mean disjoint samples."""
    train = {tuple(row) for row in to_native(split.train_images).flatten(1).tolist()}
    held_out = {tuple(row) for row in to_native(split.held_out_images).flatten(1).tolist()}
    assert not train & held_out
    assert len(train) + len(held_out) == len(load_digits().data)


def test_training_is_seeded():
    first, _ = train_classifier(seed=0, epochs=1)
    second, _ = train_classifier(seed=0, epochs=1)
    other, _ = train_classifier(seed=1, epochs=1)
    for name, weight in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[name], weight, rtol=0, atol=0)
    assert not torch.equal(other.state_dict()["head.weight"], first.state_dict()["head.weight"])


def test_frechet_floor_is_far_below_noise(split, classifier):
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(split.held_out_images.shape, generator=gen) * 2 - 1
    with torch.no_grad():
        train = classifier.features(split.train_images)
        held_out = classifier.features(split.held_out_images)
        floor = frechet_distance(train, held_out)
        to_noise = frechet_distance(held_out, classifier.features(noise))
    assert floor < 0.05 * to_noise
