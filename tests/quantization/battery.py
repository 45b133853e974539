"""The battery every quantizer inherits (as `tests/caching/battery.py` is for caches).

A quantizer's test module subclasses `QuantizerBattery` as `TestXxx` and sets `name`, `plan` (its fields
on the tiny model) and `max_error`; a weight quantizer adds `ShrinksWeights` (and `most`), a calibrated
one `Calibrated`. Every check runs a real (tiny, random) DiT through the engine and compares with the
unquantized output of the same request: it stays close, changes something, composes with a cache and a
non-default sampler, and its config is documented and validated.
"""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch
from ditserve_testing import assert_documented_config, engine_for

from ditserve.errors import PlanError
from ditserve.quantization.layers import block_linears, weight_bytes
from ditserve.registry import QUANTIZERS
from ditserve.request import GenerationRequest

CALIB = {"calibration_samples": 2, "calibration_steps": 3}
"""A short calibration for the tiny model."""
REQUEST = GenerationRequest(class_label=3, steps=4, seed=11, num_images=2)


def images(engine) -> torch.Tensor:
    return engine.generate(REQUEST).images


class QuantizerBattery:
    pytestmark = pytest.mark.usefixtures("one_thread")  # inherited by every TestXxx

    name: ClassVar[str]
    plan: ClassVar[dict]
    """The quantizer's plan section on the tiny model (`name` included)."""
    max_error: ClassVar[float]
    """Mean |Δ| in [0, 1] pixels allowed against the unquantized output of the random model (4 steps)."""

    def test_registered_with_a_documented_validated_config(self):
        assert_documented_config(QUANTIZERS, self.plan)

    def test_stays_close_to_unquantized_and_changes_something(self, quant_dit_dir, baseline):
        out = images(engine_for(quant_dit_dir, quant=self.plan))
        assert torch.isfinite(out).all()
        error = (out - baseline).abs().mean().item()
        assert error <= self.max_error, f"{self.name}: mean |Δ| {error:.4f} > {self.max_error}"
        assert not torch.equal(out, baseline), f"{self.name} left the output bit-identical: nothing was quantized"

    def test_composes_with_a_cache_and_a_sampler(self, quant_dit_dir):
        plan = {"quant": self.plan, "cache": {"name": "fora", "interval": 2}, "sampler": {"name": "ddpm", "steps": 4}}
        plain = engine_for(quant_dit_dir, cache=plan["cache"], sampler=plan["sampler"]).generate(REQUEST)
        result = engine_for(quant_dit_dir, **plan).generate(REQUEST)
        assert torch.isfinite(result.images).all()
        assert result.stats.block_evaluations < result.stats.block_evaluations_full  # the cache skipped blocks
        assert result.stats.block_evaluations == plain.stats.block_evaluations
        assert (result.images - plain.images).abs().mean() <= self.max_error

    def test_calibrates_only_when_it_says_it_needs_to(self, quant_dit_dir, tmp_path):
        """`ditserve calibrate --quant` refuses a quantizer that needs no calibration, naming those that do."""
        from ditserve.calibrate import calibrate

        if QUANTIZERS.get(self.name).needs_calibration:
            assert isinstance(self, Calibrated), "a calibrated quantizer runs the `Calibrated` checks"
            return
        config = tmp_path / "model.yaml"
        config.write_text(json.dumps({"model": {"name": "q", "path": str(quant_dit_dir), "family": "dit"}}))
        calibrated = ", ".join(name for name, cls in QUANTIZERS if cls.needs_calibration)
        with pytest.raises(PlanError, match=f"needs no calibration; calibrated ones: {calibrated}$"):
            calibrate(str(config), "quant", self.name, None)


class ShrinksWeights:
    """Mixin for a weight quantizer: no float linear is left in the blocks, and they weigh at most `most` of before."""

    most: ClassVar[float]

    def test_shrinks_block_layers(self, quant_dit_dir):
        plain = engine_for(quant_dit_dir)
        before = sum(weight_bytes(m) for m in block_linears(plain.model).values())
        engine = engine_for(quant_dit_dir, quant=self.plan)
        assert not block_linears(engine.model), "float linears left in the blocks"
        blocks = [group.blocks for group in engine.model.adapter.block_groups(engine.model.transformer)]
        layers = [
            m
            for block in blocks
            for m in block.modules()
            if type(m).__name__.endswith("Linear") and m.__module__.startswith("ditserve")
        ]
        assert layers, f"{self.name} installed no quantized layer"
        assert sum(weight_bytes(m) for m in layers) <= self.most * before


class Calibrated:
    """Mixin for a quantizer that needs calibration: a stored calibration (`ditserve calibrate --quant`, which
    names its file in the YAML) gives the same model as calibrating at load, and a missing file names the command."""

    def test_stored_calibration_gives_the_same_model_as_calibrating_at_load(self, quant_dit_dir, tmp_path):
        import yaml

        from ditserve.cli import main
        from ditserve.config import load_config

        config = tmp_path / "model.yaml"
        model = {"name": "q", "path": str(quant_dit_dir), "family": "dit"}
        config.write_text(yaml.safe_dump({"model": model, "plan": {"quant": self.plan}}))
        stored = tmp_path / "statistics.safetensors"
        command = ["calibrate", "--config", str(config), "--quant", self.name, "--out", str(stored), "--samples", "2"]
        assert main(command) == 0
        assert load_config(config).plan.quant.calibration == str(stored)
        from_file = images(engine_for(quant_dit_dir, quant={**self.plan, "calibration": str(stored)}))
        assert torch.equal(from_file, images(engine_for(quant_dit_dir, quant=self.plan)))

    def test_missing_calibration_file_names_the_command(self, quant_dit_dir, tmp_path):
        with pytest.raises(PlanError, match=f"ditserve calibrate --quant {self.name}"):
            engine_for(quant_dit_dir, quant={**self.plan, "calibration": str(tmp_path / "absent.safetensors")})
