"""What a quantizer is: a config and `apply`, which rewrites the loaded transformer once at load time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ditserve.registry import Strategy, StrategyConfig

if TYPE_CHECKING:
    from ditserve.models.base import LoadedModel


class QuantConfig(StrategyConfig):
    """Base of quantizer configs."""


class Quantizer(Strategy):
    """Rewrites the transformer's layers (weights, activations, attention) for lower precision."""

    Config = QuantConfig

    def apply(self, model: LoadedModel) -> None:
        """Quantize the loaded model in place."""
