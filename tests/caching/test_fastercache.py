"""The cache battery for `fastercache`, the wrapper against diffusers' own FasterCache hooks, and its
refusal to load where diffusers' hooks find no attention layer."""

import pytest
import torch
from torch import nn

from .battery import CacheBattery
from .conftest import tiny_pixart
from .library import library_loop


class TestFasterCache(CacheBattery):
    name = "fastercache"
    unit = "attention"
    exact = {"interval": 1}
    skipping = {"interval": 3, "window": [-1, 1000]}


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_the_wrapper_gives_diffusers_output(family):
    from diffusers.hooks import FasterCacheConfig, apply_faster_cache

    ours = TestFasterCache().loop(family, {"interval": 3, "weight": 0.3, "window": [150, 950]})
    library, timestep = library_loop(family)
    config = FasterCacheConfig(
        spatial_attention_block_skip_range=3,
        spatial_attention_timestep_skip_range=(150, 950),
        attention_weight_callback=lambda _: 0.3,
        is_guidance_distilled=True,
        current_timestep_callback=timestep,
    )
    apply_faster_cache(library.model.transformer, config)
    got, evaluations = ours.run(unit="attention")
    expected, library_evaluations = library.run(unit="attention")
    full = TestFasterCache().loop(family, None).run(unit="attention")[1]
    assert torch.equal(got, expected) and evaluations == library_evaluations < full


def test_it_refuses_to_load_where_diffusers_finds_no_attention_layer():
    """diffusers' FasterCache only looks under top-level `transformer_blocks` (and three other names): a
    transformer whose blocks sit deeper gets no hooks, and the cache says so instead of running uncached."""
    from pathlib import Path

    from ditserve.errors import PlanError
    from ditserve.hooks import hook_names
    from ditserve.models.base import BlockGroup, LoadedModel
    from ditserve.models.pixart import PixArtAdapter
    from ditserve.registry import CACHES

    class Nested(PixArtAdapter):
        def block_groups(self, transformer):
            return [BlockGroup("inner.transformer_blocks", transformer.inner.transformer_blocks)]

    wrapper = nn.Module()
    wrapper.inner = tiny_pixart()
    model = LoadedModel(Nested(), wrapper, {}, Path("."), torch.device("cpu"), torch.float32)
    cache = CACHES.get("fastercache")(CACHES.parse({"name": "fastercache"}, "plan.cache"))
    with pytest.raises(PlanError, match=r"did not reach the attention layers inner\.transformer_blocks\.0\.attn1"):
        cache.apply(model)
    cache.remove()  # what the engine does after a refused override: the model is left as loaded
    assert hook_names(wrapper) == {}
