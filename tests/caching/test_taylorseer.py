"""The cache battery for `taylorseer`."""

import pytest
import torch

from .battery import CacheBattery


class TestTaylorSeer(CacheBattery):
    name = "taylorseer"
    exact = {"interval": 1}
    skipping = {"interval": 3, "order": 1, "warmup": 2}


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_the_wrapper_gives_diffusers_output(family):
    from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

    ours = TestTaylorSeer().loop(family, {"interval": 3, "order": 2, "warmup": 2})
    library = TestTaylorSeer().loop(family, None)
    groups = [group.name for group in library.model.adapter.block_groups(library.model.transformer)]
    config = TaylorSeerCacheConfig(
        cache_interval=3,
        disable_cache_before_step=2,
        max_order=2,
        taylor_factors_dtype=torch.float32,
        cache_identifiers=[rf"{name}\.\d+" for name in groups],
    )
    apply_taylorseer_cache(library.model.transformer, config)
    got, evaluations = ours.run()
    expected, library_evaluations = library.run(context=True)
    assert torch.equal(got, expected) and evaluations == library_evaluations < library.model_blocks(10)
