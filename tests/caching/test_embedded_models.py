"""Every registered cache, with its defaults, serves a small request on both embedded models (the class
DiT and the SD3-family text model) as a per-request override: it runs, or — for a cache that needs a
calibration the model does not ship — is refused before any model work with the command that fixes it.
Never an error in the middle of the request. (Whether each skips blocks, and how faithfully, is for the
fidelity tests.)"""

from __future__ import annotations

import pytest
import torch

from ditserve.errors import RequestError
from ditserve.registry import CACHES
from ditserve.request import GenerationRequest

SUBJECTS = {"digits-dit": {"class_label": 7}, "digits-flow": {"prompt": "a handwritten seven"}}


@pytest.fixture(scope="module", params=list(SUBJECTS))
def embedded(request):
    from ditserve.engine import Engine

    return request.param, Engine.from_config(f"builtin:{request.param}")


@pytest.mark.parametrize("name", CACHES.names())
def test_every_cache_runs_with_its_defaults_or_asks_for_calibration(embedded, name):
    model, engine = embedded
    ask = GenerationRequest(**SUBJECTS[model], seed=3, steps=12, num_images=1, cache={"name": name})
    if CACHES.get(name).needs_calibration and not _calibrated(engine, name):
        with pytest.raises(RequestError, match=f"ditserve calibrate --cache {name}"):
            engine.generate(ask)
        return
    result = engine.generate(ask)
    assert torch.isfinite(result.images).all() and result.stats.steps == 12


def _calibrated(engine, name: str) -> bool:
    """Whether the cache's defaults load on this model (its calibration ships with it)."""
    from ditserve.errors import PlanError

    cache = CACHES.get(name)(CACHES.parse({"name": name}, "plan.cache"))
    try:
        cache.apply(engine.model)
    except PlanError:
        return False
    finally:
        cache.remove()
    return True
