"""Image tensors ↔ PIL images and PNG bytes, and sample grids for reports."""

from __future__ import annotations

import io

import torch
from PIL import Image


def to_pil(images: torch.Tensor, upscale: int = 1) -> list[Image.Image]:
    """(N, C, H, W) floats in [0, 1] → PIL images (grey for C=1), optionally enlarged by pixel repetition."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if upscale > 1:
        pixels = pixels.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    out = []
    for image in pixels:
        array = image.permute(1, 2, 0).numpy()
        out.append(Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array))
    return out


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def grid(images: torch.Tensor, rows: int, upscale: int = 1, pad: int = 1) -> Image.Image:
    """Lay (N, C, H, W) images in [0, 1] out row by row (N must be a multiple of `rows`), `pad` px apart."""
    n, c, h, w = images.shape
    cols = n // rows
    canvas = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for index in range(rows * cols):
        r, k = divmod(index, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[:, top : top + h, left : left + w] = images[index]
    return to_pil(canvas[None], upscale)[0]
