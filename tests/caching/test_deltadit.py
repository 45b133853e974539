"""The cache battery for `delta-dit`."""

from .battery import CacheBattery


class TestDeltaDiT(CacheBattery):
    name = "delta-dit"
    exact = {"interval": 1}
    skipping = {"interval": 2, "blocks": 2}
