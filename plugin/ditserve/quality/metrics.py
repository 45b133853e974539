"""Per-image fidelity of an accelerated output against the reference output: PSNR and SSIM.

Both take (N, C, H, W) images in [-1, 1] (so the data range is 2) and return one value per image, so a
benchmark can report a mean and also look at the worst images. They compute in float64: an acceleration
that changes a few pixels by 1e-4 should not read as identical because of float32 rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 7
"""Gaussian window side. The usual 11 would leave a 6×6 map on a 16×16 image; 7 keeps a 10×10 map
(no padding, as in Wang et al.) while still averaging over a neighbourhood of a few native pixels."""
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, shape (N,); +inf where the two images are identical."""
    _check_pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def mean_finite(values: torch.Tensor) -> float:
    """The mean of the finite values; +inf only when every value is +inf.

    Per-image PSNR is +inf for each image an acceleration reproduces exactly, and one such image would
    make a plain mean +inf. Report this mean together with `int(values.isinf().sum())`, the number of
    identical images, rather than capping at an arbitrary ceiling that would blend into real values.
    """
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return math.inf
    return finite.double().mean().item()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Mean structural similarity per image, shape (N,): 1 for identical images, lower as they differ.

    Wang et al. (2004) with a 7×7 Gaussian window (sigma 1.5), K1=0.01, K2=0.03, no padding; each channel
    is filtered on its own and the SSIM map is averaged over channels and positions.
    """
    _check_pair(a, b)
    channels, height, width = a.shape[1:]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, got {height}×{width}; "
            "compare at the model's 16×16 resolution rather than the native 8×8."
        )
    window = _gaussian_window(channels).to(a.device)
    x, y = a.double(), b.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.pow(2)
    var_y = blur(y * y) - mu_y.pow(2)
    cov = blur(x * y) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


def _gaussian_window(channels: int) -> torch.Tensor:
    """The normalised 2-D Gaussian, one copy per channel: shape (C, 1, window, window), float64."""
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(
            f"expected two (N, C, H, W) batches of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
