"""fp8 weights: the battery."""

from __future__ import annotations

from .battery import QuantizerBattery, ShrinksWeights


class TestFP8(QuantizerBattery, ShrinksWeights):
    name = "fp8"
    plan = {"name": "fp8"}
    max_error = 0.1
    most = 0.3
