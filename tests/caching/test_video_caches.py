"""Every cache on the embedded video model (digits-video: Wan blocks, 8 latent frames of 64 tokens each, per-frame
timesteps trained in): with its battery's skipping settings, as a per-request override, it makes a video of the
asked shape, finite, and computes fewer of its unit (blocks, attention layers or tokens) than the same calls
uncached. AdaCache's motion regularisation reads the motion between latent frames and with it reuses less."""

from __future__ import annotations

import pytest
import torch

from ditserve.config import load_config
from ditserve.request import GenerationRequest

from . import test_tgate
from .battery import every_cache_settings
from .test_blockcaching import identity_alignment

FRAMES = 8
STEPS = 8
UNIT = {"pab": "attention", "fastercache": "attention", "tgate": "attention", "toca": "token", "duca": "token"}
"""What a cache skips where it is not whole blocks (the battery's `unit`); ICC skips none of them."""


def video_settings() -> dict[str, dict]:
    """Each cache that runs on Wan blocks → its battery's skipping settings (T-GATE's battery runs on PixArt: it
    needs cross-attention, which Wan has)."""
    settings = {name: spec for name, spec in every_cache_settings().items() if name != "none"}
    settings["tgate"] = {"name": "tgate", **test_tgate.TestTGate.skipping}
    settings["block-caching"]["alignment"] = identity_alignment(4, channels=96)  # the battery's is for width 16
    return settings


@pytest.fixture(scope="module")
def video_engine():
    from ditserve.engine import Engine

    return Engine(load_config("builtin:digits-video"))


def ask(cache: dict | None, frames: int = FRAMES) -> GenerationRequest:
    return GenerationRequest(prompt="a seven moving left", seed=2, steps=STEPS, num_frames=frames, cache=cache)


def test_every_wan_block_cache_is_covered():
    assert {"pab", "adacache", "teacache", "fastercache", "fora", "tgate"} <= set(video_settings())


@pytest.mark.parametrize("name", sorted(video_settings()))
def test_cache_makes_the_video_and_skips_as_counted(video_engine, name):
    result = video_engine.generate(ask(video_settings()[name]))
    assert result.videos.shape == (1, FRAMES, 1, 16, 16) and torch.isfinite(result.videos).all()
    if name == "icc":  # a low-rank correction stands in for linear layers inside blocks that run: nothing counted
        assert not torch.equal(result.videos, video_engine.generate(ask(None)).videos)
        return
    unit = UNIT.get(name, "block")
    computed, full = getattr(result.stats, f"{unit}_evaluations"), getattr(result.stats, f"{unit}_evaluations_full")
    assert 0 < computed < full, f"{name} computed {computed} of {full} {unit} evaluations"
    assert result.stats.steps == STEPS


def test_adacache_motion_regularisation_reads_frame_motion_and_reuses_less(video_engine):
    """The same codebook reuses less with motion on: the rate is scaled up by the motion between frames."""
    base = {"name": "adacache", "codebook": [[0.05, 8]], "warmup": 1}  # rates here: 0.02-0.04 per fiftieth
    plain = video_engine.generate(ask(base)).stats.block_evaluations
    moving = video_engine.generate(ask({**base, "motion": 10.0})).stats.block_evaluations
    assert plain < moving
    still = video_engine.generate(ask({**base, "motion": 10.0}, frames=1)).stats.block_evaluations
    assert still == video_engine.generate(ask(base, frames=1)).stats.block_evaluations  # one frame: no motion
