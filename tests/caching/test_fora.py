"""The cache battery for `fora`."""

from .battery import CacheBattery


class TestFora(CacheBattery):
    name = "fora"
    exact = {"interval": 1}
    skipping = {"interval": 3}
