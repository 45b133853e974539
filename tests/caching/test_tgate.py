"""The cache battery for `tgate` (on the tiny PixArt engine: it needs cross-attention), and what the gate does."""

import torch

from .battery import CacheBattery, engine_for


class TestTGate(CacheBattery):
    name = "tgate"
    unit = "attention"
    family = "pixart"
    exact = {"gate": 1.0}
    skipping = {"gate": 0.3, "self_interval": 2, "warmup": 1}
    refuses = {
        "unet": "runs on the pixart and wan family only",
        "flux": "has none .*MMDiT",
        "sd3": "has none .*MMDiT",
    }


def test_it_refuses_a_model_without_cross_attention(dit4_dir):
    import pytest

    from ditserve.errors import PlanError

    with pytest.raises(
        PlanError,
        match="cache 'tgate' runs on models with cross-attention only, and this dit family transformer has none",
    ):
        engine_for(dit4_dir, {"name": "tgate"})


def test_after_the_gate_guidance_halves_share_one_cross_attention_output(pixart_dir, pixart_uncached):
    """After the gate both guidance branches get the same (averaged) text signal, so guidance changes nothing
    more; dropping the unconditional half (`drop_guidance`) then gives the same images as computing it."""
    from .battery import request

    ask = request(label=None, prompt="digit 4", guidance=4.0)
    dropped = engine_for(pixart_dir, {"name": "tgate", "gate": 0.5}, "pixart").generate(ask)
    kept = engine_for(pixart_dir, {"name": "tgate", "gate": 0.5, "drop_guidance": False}, "pixart").generate(ask)
    torch.testing.assert_close(dropped.images, kept.images, rtol=1e-4, atol=1e-5)
    uncached = pixart_uncached.generate(ask)
    assert not torch.equal(kept.images, uncached.images)
    counted = uncached.stats.attention_evaluations
    assert dropped.stats.attention_evaluations == kept.stats.attention_evaluations < counted
