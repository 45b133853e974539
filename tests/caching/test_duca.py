"""The cache battery for `duca`, on token counts."""

from .battery import CacheBattery


class TestDuCa(CacheBattery):
    name = "duca"
    exact = {"interval": 1}
    skipping = {"interval": 4}
    unit = "token"
