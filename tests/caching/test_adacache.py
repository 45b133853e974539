"""The cache battery for `adacache`."""

from .battery import CacheBattery, engine_for, request


class TestAdaCache(CacheBattery):
    name = "adacache"
    exact = {"codebook": []}
    skipping = {"codebook": [[10.0, 8]], "warmup": 1}  # reuse lengths in fiftieths of the trajectory


def test_slower_change_buys_longer_reuse(dit4_dir):
    def evaluations(codebook):
        engine = engine_for(dit4_dir, {"name": "adacache", "codebook": codebook, "warmup": 1})
        return engine.generate(request()).stats.block_evaluations

    # 8 steps: a step is 1/7 of the trajectory, so 15 fiftieths reuse 2 steps, 8 fiftieths 1 step
    assert evaluations([[10.0, 15]]) < evaluations([[10.0, 8]]) < evaluations([[0.0, 15]])
