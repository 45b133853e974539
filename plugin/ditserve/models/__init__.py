"""Model families (one adapter per diffusers family) and the embedded models.

`get_adapter(family)` returns the adapter; families are imported on first use so that
`import ditserve` stays cheap.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ditserve.models.base import FamilyAdapter, LoadedModel

FAMILIES: dict[str, str] = {
    "dit": "ditserve.models.dit:DiTAdapter",
    "pixart": "ditserve.models.pixart:PixArtAdapter",
    "sd3": "ditserve.models.sd3:SD3Adapter",
    "flux": "ditserve.models.flux:FluxAdapter",
    "wan": "ditserve.models.wan:WanAdapter",
    "unet": "ditserve.models.unet:UNetAdapter",
}
"""Family name → adapter class, as `module:Class`."""

BUILTIN_MODELS: dict[str, Path] = {
    "digits-dit": Path(__file__).parent / "digits" / "digits-dit",
    "digits-flow": Path(__file__).parent / "digits" / "digits-flow",
    "digits-unet": Path(__file__).parent / "digits" / "digits-unet",
    "digits-scenes": Path(__file__).parent / "digits" / "digits-scenes",
    "digits-video": Path(__file__).parent / "digits" / "digits-video",
}
"""Embedded models addressable as `builtin:<name>`: checkpoint directories shipped in the package."""
BUILTIN_TRAINERS: dict[str, str] = {
    "digits-dit": "ditserve.models.digits.train",
    "digits-flow": "ditserve.models.digits.train_flow",
    "digits-unet": "ditserve.models.digits.train_unet",
    "digits-scenes": "ditserve.models.digits.train_scenes",
    "digits-video": "ditserve.models.digits.train_video",
}
"""The module that (re)trains each embedded model's weights."""


def get_adapter(family: str) -> FamilyAdapter:
    try:
        module, _, cls = FAMILIES[family].partition(":")
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known families: {', '.join(sorted(FAMILIES))}") from None
    return getattr(importlib.import_module(module), cls)()


__all__ = ["BUILTIN_MODELS", "BUILTIN_TRAINERS", "FAMILIES", "FamilyAdapter", "LoadedModel", "get_adapter"]
