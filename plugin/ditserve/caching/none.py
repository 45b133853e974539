"""No caching: every block runs at every step. The baseline every cache is measured against."""

from __future__ import annotations

from typing import Literal

from ditserve.caching.base import CacheConfig, CacheStrategy
from ditserve.registry import CACHES


class NoCacheConfig(CacheConfig):
    name: Literal["none"] = "none"


@CACHES.register("none")
class NoCache(CacheStrategy):
    """No caching: every transformer block runs at every step."""

    Config = NoCacheConfig
    mixes_in_batch = True  # nothing is decided, per call or per sample
