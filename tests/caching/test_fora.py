"""The cache battery for `fora`, its whole-call skips, and its schedule stretched at the trajectory's ends."""

import pytest
import torch

from ditserve.caching.fora import Fora
from ditserve.caching.trajectory import static_full_step
from ditserve.registry import CACHES

from .battery import CacheBattery
from .conftest import FAMILIES, FamilyLoop


class TestFora(CacheBattery):
    name = "fora"
    exact = {"interval": 1}
    skipping = {"interval": 3}


class BlockByBlock(Fora):
    """FORA adding each skipped block's own residual: the stand-in the whole-call path must equal."""

    def skips_call(self) -> bool:
        return False


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"unet"}))  # U-Net stages have no residuals
@pytest.mark.parametrize("name", ["fora", "ab-cache"])
def test_a_skipped_call_adds_each_groups_residual_once_as_the_blocks_would(family, name):
    """Skipping a whole call adds each block group's telescoped residual at its first block; the result must
    be the blocks' residuals added one by one (up to rounding), with the same blocks skipped, on every family
    (dual-stream blocks, SD3's last block without a text stream, Flux's two groups)."""
    results = []
    for cls in (CACHES.get(name), type("BlockByBlock", (BlockByBlock, CACHES.get(name)), {})):
        loop = FamilyLoop(family)
        cache = cls(CACHES.parse({"name": name, "interval": 3, "warmup": 1}, "plan.cache"))
        cache.apply(loop.model)
        results.append(loop.run(steps=10))
    (whole, whole_blocks), (one_by_one, blocks) = results
    assert whole_blocks == blocks < FamilyLoop(family).model_blocks(10)
    torch.testing.assert_close(whole, one_by_one, rtol=1e-4, atol=1e-5)


def full_steps(steps: int, spacing: float, ends: float) -> list[int]:
    progress = [k / (steps - 1) for k in range(steps)]
    last, found = 0.0, []
    for call, p in enumerate(progress):
        if static_full_step(call, p, last, 2, None, spacing, ends):
            found.append(call)
            last = p
    return found


def test_stretched_ends_put_full_steps_closer_at_the_start_and_end_than_in_the_middle():
    even = full_steps(50, 0.12, 0.0)
    stretched = full_steps(50, 0.12, 0.3)
    gaps = [b - a for a, b in zip(stretched[1:], stretched[2:], strict=False)]
    assert {b - a for a, b in zip(even[1:], even[2:], strict=False)} == {6}
    assert max(gaps) == gaps[len(gaps) // 2] > gaps[0] and max(gaps) > gaps[-1], stretched
