"""The cache battery for `block-caching`, and its calibration."""

import pytest

from .battery import CacheBattery, engine_for, request


def curves(blocks: int) -> list[list[float]]:
    """Change curves where later blocks change faster (so they recompute more often)."""
    return [[0.02 * (b + 1) for b in range(blocks)] for _ in range(9)]


def identity_alignment(blocks: int, channels: int = 16, buckets: int = 8) -> dict:
    """An alignment in the current format that leaves every reused residual as it is."""
    ones, zeros = [[[1.0] * channels] * buckets] * blocks, [[[0.0] * channels] * buckets] * blocks
    return {"version": 2, "threshold": 0.15, "scale": ones, "shift": zeros}


class TestBlockCaching(CacheBattery):
    name = "block-caching"
    exact = {"threshold": 0.0, "curves": curves(4)}
    exact_families = {"flux": {"threshold": 0.0, "curves": curves(5)}}
    skipping = {"threshold": 0.15, "curves": curves(4), "alignment": identity_alignment(4)}
    skipping_families = {
        "flux": {"threshold": 0.15, "curves": curves(5)},
        **{family: {"threshold": 0.15, "curves": curves(4)} for family in ("pixart", "sd3", "wan")},
    }


def test_without_calibration_it_refuses_to_load_and_names_the_command(dit4_dir):
    from ditserve.errors import PlanError

    with pytest.raises(PlanError, match="ditserve calibrate --cache block-caching"):
        engine_for(dit4_dir, {"name": "block-caching"})
    with pytest.raises(PlanError, match="another number of blocks"):
        engine_for(dit4_dir, {"name": "block-caching", "curves": curves(6)})


def test_calibration_gives_curves_a_schedule_and_an_alignment_that_helps(dit4_dir, uncached):
    from ditserve.caching.blockcaching import BlockCaching
    from ditserve.quality import mean_finite, psnr

    fields = BlockCaching.calibrate(engine_for(dit4_dir, {"name": "none"}), 3, {"threshold": 0.3})
    assert len(fields["curves"]) == 7 and len(fields["curves"][0]) == 4 and len(fields["alignment"]["scale"]) == 4
    reference = uncached.generate(request()).images * 2 - 1
    aligned = engine_for(dit4_dir, {"name": "block-caching", "threshold": 0.3, **fields}).generate(request())
    plain = engine_for(dit4_dir, {"name": "block-caching", "threshold": 0.3, "curves": fields["curves"]}).generate(
        request()
    )
    assert aligned.stats.block_evaluations == plain.stats.block_evaluations < aligned.stats.block_evaluations_full
    # the fit minimises the error of reused residuals on these seeds' distribution: it must not make things worse
    assert (
        mean_finite(psnr(aligned.images * 2 - 1, reference)) >= mean_finite(psnr(plain.images * 2 - 1, reference)) - 0.5
    )
