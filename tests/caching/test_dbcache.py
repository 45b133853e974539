"""The cache battery for `dbcache`."""

from .battery import CacheBattery


class TestDBCache(CacheBattery):
    name = "dbcache"
    exact = {"threshold": 0.0}
    skipping = {"threshold": 10.0, "warmup": 1, "front": 1, "back": 1}
