"""The cache battery for `magcache`, the wrapper against diffusers' own MagCache hooks, its calibration through
diffusers' calibrate mode, and the ratios it reads at another step count."""

import pytest
import torch

from .battery import CacheBattery, engine_for, request
from .library import library_loop

STEPS = 10
FLAT = {"ratios": [1.0] * (STEPS + 1), "progress": [k / STEPS for k in range(STEPS + 1)]}
"""A curve under which nothing changes: every step after the retention may reuse (as far as K allows)."""


class TestMagCache(CacheBattery):
    name = "magcache"
    exact = {"max_skip_steps": 0, **FLAT}
    skipping = {"retention": 0.0, **FLAT}


@pytest.mark.parametrize("family", ["flux", "pixart", "sd3", "wan"])
def test_the_wrapper_gives_diffusers_output(family):
    """Calibrated on the loop's own schedule (progress k/10 at call k), the wrapper hands the hooks the recorded
    ratios step by step; diffusers given the same ratios, retention and step count must do exactly the same. (The
    retention, 2.5 steps, falls between calls: the loop's progress comes from float32 timesteps, a hair off k/10.)"""
    from diffusers.hooks import MagCacheConfig, apply_mag_cache

    ratios = [1.0, 1.3, 1.01, 0.93, 1.02, 1.0, 0.9, 1.01, 1.0, 0.97]  # calls 3 and 6 exceed the threshold
    settings = {"ratios": ratios, "progress": [k / STEPS for k in range(STEPS)], "threshold": 0.05}
    ours = TestMagCache().loop(family, {**settings, "retention": 0.25, "max_skip_steps": 2})
    library, _ = library_loop(family)
    config = MagCacheConfig(
        threshold=0.05, max_skip_steps=2, retention_ratio=0.25, num_inference_steps=STEPS, mag_ratios=ratios
    )
    apply_mag_cache(library.model.transformer, config)
    got, evaluations = ours.run(steps=STEPS)
    expected, library_evaluations = library.run(steps=STEPS, context=True)
    assert torch.equal(got, expected) and evaluations == library_evaluations < library.model_blocks(STEPS)


def test_without_calibration_it_refuses_to_load_and_names_the_command(dit4_dir):
    from ditserve.errors import PlanError

    with pytest.raises(PlanError, match="ditserve calibrate --cache magcache"):
        engine_for(dit4_dir, {"name": "magcache"})


def test_calibration_records_diffusers_ratios_and_the_cache_loads_them(dit4_dir):
    from ditserve.caching.magcache import CALIBRATION_STEPS, MagCache

    fields = MagCache.calibrate(engine_for(dit4_dir, {"name": "none"}), samples=2)
    assert len(fields["ratios"]) == len(fields["progress"]) == CALIBRATION_STEPS and fields["ratios"][0] == 1.0
    progress = fields["progress"]
    assert progress[0] == 0.0 and all(b > a for a, b in zip(progress, progress[1:], strict=False))
    engine = engine_for(dit4_dir, {"name": "magcache", "threshold": 0.5, "retention": 0.0, **fields})
    result = engine.generate(request())
    assert 0 < result.stats.block_evaluations < result.stats.block_evaluations_full


def test_a_coarser_request_reads_the_magnitude_change_over_its_longer_steps():
    """At the calibrated schedule a step's ratio is the recorded one; a step twice as long changes the
    magnitude by the product of the two recorded ratios it spans (not by one of them, as diffusers'
    nearest-neighbour stretching of the curve would)."""
    ratios = [1.0, 1.2, 1.1, 0.9, 0.8]
    cache = TestMagCache().loop("pixart", {"ratios": ratios, "progress": [0, 0.25, 0.5, 0.75, 1.0]}).cache
    assert cache.ratio(0.25, 0.5) == pytest.approx(1.1)
    assert cache.ratio(0.5, 1.0) == pytest.approx(0.9 * 0.8)
    assert cache.ratio(0.0, 0.1) > 1.0 + cache.config.threshold  # inside the retention: always computes
