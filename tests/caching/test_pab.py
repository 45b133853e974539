"""The cache battery for `pab`, and the wrapper against diffusers' own PAB hooks."""

import pytest
import torch

from .battery import CacheBattery
from .library import library_loop


class TestPAB(CacheBattery):
    name = "pab"
    unit = "attention"
    exact = {"self_interval": 1, "cross_interval": 1}
    skipping = {"self_interval": 3, "cross_interval": 4, "window": [-1, 1000]}


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_the_wrapper_gives_diffusers_output(family):
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    ours = TestPAB().loop(family, {"self_interval": 2, "cross_interval": 3, "window": [150, 950]})
    library, timestep = library_loop(family)
    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2,
        cross_attention_block_skip_range=3,
        spatial_attention_timestep_skip_range=(150, 950),
        cross_attention_timestep_skip_range=(150, 950),
        current_timestep_callback=timestep,
    )
    apply_pyramid_attention_broadcast(library.model.transformer, config)
    got, evaluations = ours.run(unit="attention")
    expected, library_evaluations = library.run(unit="attention")
    full = TestPAB().loop(family, None).run(unit="attention")[1]
    assert torch.equal(got, expected) and evaluations == library_evaluations < full
