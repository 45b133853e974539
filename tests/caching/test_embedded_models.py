"""Every registered cache, with its defaults, serves a small request on every embedded model (the class DiT,
the SD3-family text model, the class U-Net, the PixArt-family scenes model) as a per-request override: it
runs, or — for a cache that needs a calibration the model does not ship, or that cannot run on the model's
family — is refused before any model work with the sentence that says what fixes it. Never an error in the
middle of the request. (Whether each skips blocks, and how faithfully, is for the fidelity tests.)"""

from __future__ import annotations

import re

import pytest
import torch

from ditserve.errors import RequestError
from ditserve.registry import CACHES
from ditserve.request import GenerationRequest

SUBJECTS = {
    "digits-dit": {"class_label": 7},
    "digits-flow": {"prompt": "a handwritten seven"},
    "digits-unet": {"class_label": 7},
    "digits-scenes": {"prompt": "7 3 / 1 9"},
}


@pytest.fixture(scope="module", params=list(SUBJECTS))
def embedded(request):
    from ditserve.engine import Engine

    return request.param, Engine.from_config(f"builtin:{request.param}")


@pytest.mark.parametrize("name", CACHES.names())
def test_every_cache_runs_with_its_defaults_or_is_refused_saying_what_fixes_it(embedded, name):
    model, engine = embedded
    ask = GenerationRequest(**SUBJECTS[model], seed=3, steps=12, num_images=1, cache={"name": name})
    refusal = _refusal(engine, name)
    if refusal is None:
        result = engine.generate(ask)
        assert torch.isfinite(result.images).all() and result.stats.steps == 12
        return
    fix = "family" if "runs on" in refusal or "cannot run on" in refusal else f"ditserve calibrate --cache {name}"
    assert fix in refusal and (fix == "family" or CACHES.get(name).needs_calibration), refusal
    before = engine.block_counter.count
    with pytest.raises(RequestError, match=re.escape(refusal)):
        engine.generate(ask)
    assert engine.block_counter.count == before


def _refusal(engine, name: str) -> str | None:
    """Why the cache's defaults do not load on this model (its family, a calibration it does not ship), or None."""
    from ditserve.errors import PlanError

    cache = CACHES.get(name)(CACHES.parse({"name": name}, "plan.cache"))
    try:
        cache.apply(engine.model)
    except PlanError as err:
        return str(err)
    finally:
        cache.remove()
    return None
