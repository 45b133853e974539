"""The cache battery for `smoothcache`, and its calibration."""

import pytest

from .battery import CacheBattery, engine_for, request

ERRORS = {name: [0.05] * 9 for name in ("transformer_blocks", "single_transformer_blocks", "blocks")}


class TestSmoothCache(CacheBattery):
    name = "smoothcache"
    exact = {"alpha": 0.0, "errors": ERRORS}
    skipping = {"alpha": 0.2, "errors": ERRORS}


def test_without_calibration_it_refuses_to_load_and_names_the_command(dit4_dir):
    from ditserve.errors import PlanError

    with pytest.raises(PlanError, match="ditserve calibrate --cache smoothcache"):
        engine_for(dit4_dir, {"name": "smoothcache"})


def test_calibration_records_an_error_curve_per_layer_type_that_drives_the_schedule(dit4_dir):
    from ditserve.caching.smoothcache import SmoothCache

    fields = SmoothCache.calibrate(engine_for(dit4_dir, {"name": "none"}), samples=2)
    curve = fields["errors"]["transformer_blocks"]
    assert list(fields["errors"]) == ["transformer_blocks"] and len(curve) == 7  # 8 steps → 7 changes
    assert all(value > 0 for value in curve)
    loose = engine_for(dit4_dir, {"name": "smoothcache", "alpha": 2 * max(curve), **fields}).generate(request())
    tight = engine_for(dit4_dir, {"name": "smoothcache", "alpha": 0.5 * min(curve), **fields}).generate(request())
    assert loose.stats.block_evaluations < tight.stats.block_evaluations == tight.stats.block_evaluations_full
