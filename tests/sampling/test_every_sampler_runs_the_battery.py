"""Every registered sampler has a test class that runs the battery (a new sampler cannot be left out)."""

from __future__ import annotations

import importlib
from pathlib import Path

from ditserve.registry import SAMPLERS

from .battery import SamplerBattery


def battery_classes(base: type) -> list[type]:
    """The subclasses of `base` in this folder's test modules (imported here, so the set does not depend on
    which modules this run collected)."""
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        importlib.import_module(f".{path.stem}", __package__)
    found, pending = [], list(base.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_sampler_runs_the_battery():
    tested = {cls.name for cls in battery_classes(SamplerBattery) if cls.__name__.startswith("Test")}
    assert tested == set(SAMPLERS.builtins)
