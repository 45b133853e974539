"""The cache battery for `adacache`."""

from .battery import CacheBattery, engine_for, request


class TestAdaCache(CacheBattery):
    name = "adacache"
    exact = {"codebook": []}
    skipping = {"codebook": [[10.0, 2]], "warmup": 1}


def test_slower_change_buys_longer_reuse(dit4_dir):
    def evaluations(codebook):
        engine = engine_for(dit4_dir, {"name": "adacache", "codebook": codebook, "warmup": 1})
        return engine.generate(request()).stats.block_evaluations

    assert evaluations([[10.0, 3]]) < evaluations([[10.0, 1]]) < evaluations([[0.0, 3]])
