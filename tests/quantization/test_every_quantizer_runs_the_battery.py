"""Every registered quantizer has a test class that runs the battery (a new quantizer cannot be left out)."""

from __future__ import annotations

import importlib
from pathlib import Path

from ditserve.registry import QUANTIZERS

from .battery import QuantizerBattery


def test_every_quantizer_runs_the_battery():
    """`none` is what every battery check compares with; each other quantizer has a `TestXxx(QuantizerBattery)`."""
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        importlib.import_module(f".{path.stem}", __package__)
    tested = {cls.name for cls in QuantizerBattery.__subclasses__() if cls.__name__.startswith("Test")}
    assert tested == set(QUANTIZERS.builtins) - {"none"}
