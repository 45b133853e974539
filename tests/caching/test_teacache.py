"""The cache battery for `teacache`."""

import pytest

from .battery import CacheBattery, engine_for, request


class TestTeaCache(CacheBattery):
    name = "teacache"
    exact = {"threshold": 0.0, "coefficients": [1.0, 0.0]}
    skipping = {"threshold": 0.5, "coefficients": [1.0, 0.0]}


def test_without_calibration_it_refuses_to_load_and_names_the_command(dit4_dir):
    from ditserve.errors import PlanError

    with pytest.raises(PlanError, match="ditserve calibrate --cache teacache"):
        engine_for(dit4_dir, {"name": "teacache", "threshold": 0.1})


def test_calibration_fits_the_output_change_from_the_modulated_input_change(dit4_dir):
    import numpy as np

    from ditserve.caching.teacache import TeaCache

    fields = TeaCache.calibrate(engine_for(dit4_dir, {"name": "none"}), samples=2)
    coefficients = fields["coefficients"]
    assert len(coefficients) == 5 and all(np.isfinite(coefficients))
    engine = engine_for(dit4_dir, {"name": "teacache", "threshold": 0.3, **fields})
    result = engine.generate(request())
    assert 0 < result.stats.block_evaluations < result.stats.block_evaluations_full


def test_the_calibrate_command_writes_the_fit_into_the_yaml_and_it_loads(dit4_dir, tmp_path, capsys):
    import yaml

    from ditserve.cli import main
    from ditserve.engine import Engine

    file = tmp_path / "model.yaml"
    model = {"name": "tiny", "path": str(dit4_dir), "family": "dit"}
    plan = {"sampler": {"name": "ddim", "steps": 6}, "cache": {"name": "teacache", "threshold": 0.4}}
    file.write_text(yaml.safe_dump({"model": model, "plan": plan}))
    assert main(["calibrate", "--cache", "teacache", "--config", str(file), "--samples", "2"]) == 0
    cache = yaml.safe_load(file.read_text())["plan"]["cache"]
    assert cache["threshold"] == 0.4 and len(cache["coefficients"]) == 5  # the threshold kept, the fit added
    assert Engine.from_config(file).cache.name == "teacache"
    assert main(["calibrate", "--cache", "fora", "--config", str(file)]) == 2
    assert "needs no calibration" in capsys.readouterr().err
