"""The cache battery for `learning-to-cache`, and the learning of its router."""

import json
import tempfile
from pathlib import Path

import pytest

from .battery import CacheBattery, engine_for, request


def router_file(blocks: int) -> str:
    """A router over 10 steps where the second half of the blocks falls below 0.5 every other step."""
    rows = [[0.9 if b < blocks // 2 or k % 2 == 0 else 0.2 for b in range(blocks)] for k in range(10)]
    path = Path(tempfile.mkdtemp()) / f"router-{blocks}.json"
    path.write_text(json.dumps({"progress": [k / 10 for k in range(10)], "router": rows}))
    return str(path)


class TestLearningToCache(CacheBattery):
    name = "learning-to-cache"
    exact = {"threshold": 0.0, "schedule": router_file(4)}
    exact_families = {"flux": {"threshold": 0.0, "schedule": router_file(5)}}
    skipping = {"threshold": 0.5, "schedule": router_file(4)}
    skipping_families = {"flux": {"threshold": 0.5, "schedule": router_file(5)}}


def test_without_a_schedule_it_refuses_to_load_and_names_the_command(dit4_dir, tmp_path):
    from ditserve.errors import PlanError

    with pytest.raises(PlanError, match="ditserve calibrate --cache learning-to-cache"):
        engine_for(dit4_dir, {"name": "learning-to-cache"})
    with pytest.raises(PlanError, match="cannot read its schedule"):
        engine_for(dit4_dir, {"name": "learning-to-cache", "schedule": str(tmp_path / "missing.json")})


def test_learning_with_a_frozen_model_gives_a_router_that_reuses_the_fraction_asked_for(dit4_dir, tmp_path):
    from ditserve.caching.learningtocache import LearningToCache

    engine = engine_for(dit4_dir, {"name": "none"})
    weights = [p.clone() for p in engine.model.transformer.parameters()]
    reused = []
    for reuse, folder in ((0.2, tmp_path / "a"), (0.4, tmp_path / "b")):
        folder.mkdir()
        fields = LearningToCache.calibrate(engine, 1, {"reuse": reuse, "epochs": 10}, folder)
        router = json.loads(Path(fields["schedule"]).read_text())["router"]
        assert len(router) == 8 and len(router[0]) == 4
        stats = engine_for(dit4_dir, {"name": "learning-to-cache", **fields}).generate(request()).stats
        reused.append(1 - stats.block_evaluations / stats.block_evaluations_full)
    assert all((p == w).all() for p, w in zip(engine.model.transformer.parameters(), weights, strict=True))
    # at the calibration's step count the router reuses the fraction asked for, up to one block of 32
    assert reused == pytest.approx([0.2, 0.4], abs=1 / 32 + 1e-9)
