"""The transports' PNG writer gives the pixels Pillow gives (`ditserve.images.to_pil`), read back by Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ditserve.images import to_pil
from ditserve.serving import png


def decoded(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(16, 16), (5, 9), (1, 1)])
def test_png_decodes_to_the_pixels_of_to_pil(channels, shape):
    generator = torch.Generator().manual_seed(channels * 100 + shape[1])
    image = torch.rand(channels, *shape, generator=generator) * 1.4 - 0.2  # beyond [0, 1] too: clamped
    halves = torch.tensor([0.5 / 255, 1.5 / 255, 254.5 / 255])  # round to even, as to_pil does
    image.view(-1)[: halves.numel()] = halves[: image.numel()]
    expected = np.asarray(to_pil(image[None])[0])
    assert np.array_equal(decoded(png.encode(image)), expected)


def test_smooth_and_sharp_rows_survive_the_sub_filter():
    """Steps of 255 between neighbours wrap modulo 256 in the filter and come back exactly."""
    ramp = torch.zeros(3, 4, 8)
    ramp[:, :, 1::2] = 1.0
    ramp[1] = torch.linspace(0, 1, 8)
    assert np.array_equal(decoded(png.encode(ramp)), np.asarray(to_pil(ramp[None])[0]))


def test_five_channels_are_refused():
    with pytest.raises(ValueError, match="1 to 4 channels"):
        png.encode(torch.zeros(5, 2, 2))
