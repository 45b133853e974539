"""The cache battery for `ab-cache`."""

from .battery import CacheBattery


class TestABCache(CacheBattery):
    name = "ab-cache"
    exact = {"interval": 1}
    skipping = {"interval": 3, "order": 2}
