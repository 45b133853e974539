"""auto-steps (`ditserve calibrate --sampler NAME --auto-steps PSNR`): the fewest steps meeting a PSNR target,
written into the YAML, on a tiny checkpoint end to end."""

from __future__ import annotations

import yaml
from ditserve_testing import save_tiny_dit

from ditserve.cli import main
from ditserve.config import load_config


def test_auto_steps_writes_fewer_steps_and_a_sampler_without_calibration_is_refused(tmp_path):
    checkpoint = save_tiny_dit(tmp_path / "tiny")
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "tiny", "path": str(checkpoint), "family": "dit", "guidance_scale": 2.0},
        "plan": {"sampler": {"name": "paradigms", "window": 1, "steps": 12}},
    }))  # fmt: skip
    assert main(["calibrate", "--sampler", "paradigms", "--auto-steps", "25", "--config", str(config),
                 "--samples", "2"]) == 0  # fmt: skip
    steps = load_config(config).plan.sampler.steps
    assert 1 <= steps < 12
    assert main(["calibrate", "--sampler", "paradigms", "--config", str(config)]) == 2  # needs no calibration
