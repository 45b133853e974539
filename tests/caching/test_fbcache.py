"""The cache battery for `fbcache`."""

import pytest
import torch

from .battery import CacheBattery


class TestFBCache(CacheBattery):
    name = "fbcache"
    exact = {"threshold": 0.0}
    skipping = {"threshold": 10.0}


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_the_wrapper_gives_diffusers_output(family):
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    ours = TestFBCache().loop(family, {"threshold": 0.5})
    library = TestFBCache().loop(family, None)
    # our threshold is per 1/50 of the trajectory; the loop's 10 even steps are 1/10 each: 5 times that
    apply_first_block_cache(library.model.transformer, FirstBlockCacheConfig(threshold=0.5 * 5))
    got, evaluations = ours.run()
    expected, library_evaluations = library.run(context=True)
    assert torch.equal(got, expected) and evaluations == library_evaluations < library.model_blocks(10)
