"""No quantization: the model runs in the dtype its config names."""

from __future__ import annotations

from typing import Literal

from ditserve.quantization.base import QuantConfig, Quantizer
from ditserve.registry import QUANTIZERS


class NoQuantConfig(QuantConfig):
    name: Literal["none"] = "none"


@QUANTIZERS.register("none")
class NoQuant(Quantizer):
    """No quantization: weights and activations stay in the model's dtype."""

    Config = NoQuantConfig
