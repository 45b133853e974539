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
}
"""Family name → adapter class, as `module:Class`."""

BUILTIN_MODELS: dict[str, Path] = {"digits-dit": Path(__file__).parent / "digits" / "digits-dit"}
"""Embedded models addressable as `builtin:<name>`: checkpoint directories shipped in the package."""


def get_adapter(family: str) -> FamilyAdapter:
    try:
        module, _, cls = FAMILIES[family].partition(":")
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known families: {', '.join(sorted(FAMILIES))}") from None
    return getattr(importlib.import_module(module), cls)()


__all__ = ["BUILTIN_MODELS", "FAMILIES", "FamilyAdapter", "LoadedModel", "get_adapter"]
