"""Shipped calibrations: the embedded checkpoints carry what every calibrated cache needs, other models do not.

That each registered cache works as a per-request override on both embedded models, with the shipped
calibration, is what test_fidelity.py runs; here: the shipped files are there and load, a model
without them still refuses with the command that fixes it, a request's own calibration wins over the
shipped one, and `ship` writes a file a cache then loads from.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from ditserve.caching.calibration import SHIPPED_FOLDER, ship, shipped_file
from ditserve.engine import resolve_model_path
from ditserve.errors import RequestError
from ditserve.registry import CACHES

from .battery import engine_for, request

CALIBRATED = [name for name in CACHES.names() if CACHES.get(name).needs_calibration]


def test_some_caches_need_calibration():
    assert {"teacache", "smoothcache", "block-caching", "learning-to-cache"} <= set(CALIBRATED)


@pytest.mark.parametrize("model", ["digits-dit", "digits-flow"])
@pytest.mark.parametrize("name", CALIBRATED)
def test_the_embedded_models_ship_a_calibration_that_loads(model, name):
    from ditserve.caching.calibration import with_shipped_calibration

    path = shipped_file(resolve_model_path(f"builtin:{model}"), name)
    assert path.is_file(), f"run `python -m ditserve.caching.calibration --config builtin:{model} --cache {name}`"

    class Model:  # what `with_shipped_calibration` reads of a loaded model
        pass

    Model.path = path.parent.parent
    config = with_shipped_calibration(CACHES.parse({"name": name}, "plan.cache"), Model)
    assert all(getattr(config, field) is not None for field in json.loads(path.read_text()))


@pytest.mark.parametrize("name", CALIBRATED)
def test_a_model_without_shipped_calibration_is_told_to_calibrate(name, dit4_dir, uncached):
    assert not (dit4_dir / SHIPPED_FOLDER).exists()
    with pytest.raises(RequestError, match="ditserve calibrate"):
        uncached.generate(request(steps=4).model_copy(update={"cache": {"name": name}}))
    assert uncached.generate(request(steps=4)).stats.block_evaluations > 0  # the engine still serves


@pytest.fixture
def own_model(dit4_dir, tmp_path):
    """A private copy of the tiny DiT checkpoint and a YAML naming it (calibration writes into both)."""
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(dit4_dir, checkpoint)
    config = tmp_path / "model.yaml"
    plan = {"sampler": {"name": "ddim", "steps": 6}, "cache": {"name": "none"}}
    config.write_text(
        yaml.safe_dump({"model": {"name": "tiny", "path": str(checkpoint), "family": "dit"}, "plan": plan})
    )
    return checkpoint, config


def test_ship_writes_a_calibration_the_cache_then_loads(own_model):
    checkpoint, config = own_model
    path = ship(str(config), "teacache", samples=2)
    assert path == checkpoint / SHIPPED_FOLDER / "teacache.json"
    assert len(json.loads(path.read_text())["coefficients"]) == 5
    engine = engine_for(checkpoint, {"name": "teacache", "threshold": 0.5})
    result = engine.generate(request())
    assert torch.isfinite(result.images).all() and result.stats.block_evaluations < result.stats.block_evaluations_full


def test_a_file_field_is_shipped_by_its_name_and_read_from_the_checkpoint(own_model):
    checkpoint, config = own_model
    path = ship(str(config), "learning-to-cache", samples=1)
    schedule = json.loads(path.read_text())["schedule"]
    assert "/" not in schedule and (path.parent / schedule).is_file()
    engine = engine_for(checkpoint, {"name": "learning-to-cache"})
    assert engine.cache.config.schedule == str(path.parent / schedule)


def test_a_request_that_brings_its_own_calibration_keeps_it(own_model):
    checkpoint, config = own_model
    ship(str(config), "teacache", samples=2)
    own = {"name": "teacache", "threshold": 0.5, "coefficients": [1.0, 0.0]}
    assert engine_for(checkpoint, own).cache.config.coefficients == [1.0, 0.0]
