"""The cache battery for `icc`, its correction at full rank (exact: the layers are linear), channel-aware SVD,
and its calibration of the channel magnitudes.

ICC saves multiply-adds inside blocks that still run, so block and attention counts stay whole; where the
battery checks that a cache skips work, this battery checks the layer calls served by the low-rank path."""

import pytest
import torch

from .battery import CacheBattery, engine_for, request
from .conftest import FAMILIES, FamilyLoop

PLAIN = {"channel_aware": False}


class TestICC(CacheBattery):
    name = "icc"
    exact = {"interval": 1, **PLAIN}
    skipping = {"interval": 3, **PLAIN}

    def test_skipping_settings_skip_blocks_with_cfg_and_a_batch(self, cached):
        for guidance in (4.0, 1.0):
            result = cached.generate(request(num_images=3, guidance=guidance))
            assert result.images.shape[0] == 3 and torch.isfinite(result.images).all()
            assert cached.cache.increments > 0

    @pytest.mark.parametrize("family", list(FAMILIES))
    def test_fewer_block_evaluations_on(self, family):
        loop = self.loop_or_refusal(family, self.skipping)
        if loop is not None:
            got, _ = loop.run()
            assert torch.isfinite(got).all() and loop.cache.increments > 0


@pytest.mark.parametrize("family", ["pixart", "flux", "sd3"])
def test_at_full_rank_the_correction_is_the_layer_itself(family):
    """y₀ + W(x − x₀) = Wx + b: at full rank a corrected step equals computing it (up to rounding), so what
    ICC loses is the rank, never the bookkeeping."""
    expected, _ = FamilyLoop(family).run()
    loop = TestICC().loop(family, {**PLAIN, "interval": 3, "rank": 1.0})
    got, _ = loop.run()
    assert loop.cache.increments > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    stale, _ = TestICC().loop(family, {**PLAIN, "interval": 3, "rank": 0.05}).run()
    assert (stale - expected).abs().max() > 10 * (got - expected).abs().max()


def test_channel_aware_svd_fits_the_inputs_a_plain_svd_misfits():
    """With one input channel 30× larger than the others, the plain rank-2 approximation spends itself on that
    channel's column only by chance; weighting by the channel magnitudes fits the products W x that occur."""
    from ditserve.caching.icc import low_rank

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 16, generator=g)
    scales = torch.ones(16)
    scales[3] = 30.0
    x = torch.randn(256, 16, generator=g) * scales
    errors = {}
    for name, s in {"plain": None, "channel-aware": scales}.items():
        a, b = low_rank(weight, 4, s)
        errors[name] = ((x @ a.T @ b.T) - x @ weight.T).norm() / (x @ weight.T).norm()
    assert errors["channel-aware"] < 0.8 * errors["plain"]


def test_calibration_records_every_layers_channel_magnitudes_and_the_cache_loads_them(dit4_dir, tmp_path):
    from safetensors.torch import load_file

    from ditserve.caching.icc import ICC

    fields = ICC.calibrate(engine_for(dit4_dir, {"name": "none"}), samples=2, directory=tmp_path)
    scales = load_file(fields["scales"])
    assert scales and all(torch.isfinite(s).all() and (s >= 0).all() for s in scales.values())
    engine = engine_for(dit4_dir, {"name": "icc", "interval": 3, **fields})
    assert engine.generate(request()).stats.block_evaluations > 0 and engine.cache.increments > 0


def test_without_calibration_the_channel_aware_cache_refuses_to_load_and_names_the_command(dit4_dir):
    from ditserve.errors import PlanError

    with pytest.raises(PlanError, match="ditserve calibrate --cache icc"):
        engine_for(dit4_dir, {"name": "icc"})
