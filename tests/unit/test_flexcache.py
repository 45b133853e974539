"""FlexCache (ditserve/video/flexcache.py): compressed states round-trip within their stated error and keep more
runs under one byte bound, the bound holds, greedy-dual-size-frequency evicts what plain LRU would keep, and a
similar prompt still starts part-way and counts the steps it skipped."""

from __future__ import annotations

import pytest
import torch

from ditserve.config import ApproxCache, load_config
from ditserve.engine import Engine
from ditserve.nirvana import Entry, State
from ditserve.request import GenerationRequest
from ditserve.video.flexcache import FlexCache, pack, unpack

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 10
VIDEO = (1, 1, 8, 16, 16)
"""One digits-video latent: (images, channels, frames, height, width), values of a noised clip."""


def video_entry(seed: int, frames: int = 8) -> Entry:
    """A finished video request's entry at the default ladder's rungs (2, 3, 4, 5 of 10 steps)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (*VIDEO[:2], frames, *VIDEO[3:])
    states = {
        k: State(
            k, STEPS, torch.randn(shape, generator=generator), 1 - k / STEPS, torch.randn(shape, generator=generator)
        )
        for k in (2, 3, 4, 5)
    }
    return Entry(("", "key"), torch.randn(16, generator=generator), states)


def flexcache(**fields) -> FlexCache:
    return FlexCache(ApproxCache(enabled=True, **fields))


@pytest.mark.parametrize("compression", ["float16", "int8"])
def test_a_compressed_state_round_trips_within_its_stated_error(compression):
    x = torch.randn(VIDEO) * torch.linspace(0.01, 3, 8).reshape(1, 1, 8, 1, 1)  # frames of very different ranges
    packed = pack(x, compression)
    error = (unpack(packed) - x).abs()
    if compression == "float16":
        assert (
            packed.nbytes == x.nbytes // 2 and (error <= x.abs() * 2**-11 + 2**-25).all()
        )  # subnormals: half of 2^-24
    else:
        largest = x.abs().amax(dim=(-2, -1), keepdim=True)
        assert packed.nbytes == x.nbytes // 4 + 8 * 4  # one float32 scale per frame
        assert (error <= largest / 254 * (1 + 1e-6)).all()  # half a step of the frame's own scale
        assert error.max() > 0
    assert unpack(packed).dtype == x.dtype and unpack(packed[:1]).shape == x[:1].shape


def test_the_byte_bound_holds_and_int8_keeps_four_times_the_runs():
    entry_bytes = video_entry(0).nbytes
    bound = 3 * entry_bytes
    plain, packed = flexcache(max_bytes=bound), flexcache(max_bytes=bound, compression="int8")
    for seed in range(20):
        for store in (plain, packed):
            store.insert(video_entry(seed))
            assert store.nbytes <= bound
            assert store.nbytes == sum(e.nbytes for e in store.entries.values())
    assert len(plain.entries) == 3 and len(packed.entries) >= 11
    tiny = flexcache(max_bytes=entry_bytes // 5, compression="int8")
    tiny.insert(video_entry(0))
    assert not tiny.entries  # larger than the bound even packed: not kept


def cached_engine(**fields) -> Engine:
    """digits-flow with the plan's cross-request cache (FlexCache) (`fields` on top of the plan's defaults)."""
    config = load_config("builtin:digits-flow")
    cache = config.plan.approx_cache.model_copy(update={"enabled": True, **fields})
    return Engine(config.model_copy(update={"plan": config.plan.model_copy(update={"approx_cache": cache})}))


def ask(prompt: str, seed: int = 0) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, seed=seed, steps=STEPS)


@pytest.mark.parametrize("replacement", ["lru", "gdsf"])
def test_eviction_follows_the_policy(replacement):
    """A run started from once is worth twice a run never used: greedy-dual keeps it where LRU evicts it."""
    engine = cached_engine(max_entries=2, max_reuse=10, replacement=replacement, compression="int8")
    engine.generate(ask("a handwritten seven"))
    assert engine.generate(ask("a handwritten seven", seed=1)).stats.resumed_from > 0  # "seven" used once
    engine.generate(ask("a handwritten two"))
    engine.generate(ask("a handwritten four"))  # over the bound: one of "seven" (used) and "two" (not) goes
    kept_seven = engine.generate(ask("a handwritten seven", seed=2)).stats.resumed_from > 0
    assert kept_seven == (replacement == "gdsf")
    if replacement == "gdsf":
        assert engine.nirvana.clock > 0  # aged: "four" was inserted above the evicted "two"'s worth


def test_a_similar_prompt_resumes_from_a_compressed_state_and_counts_skipped_steps():
    engine = cached_engine(compression="int8", replacement="gdsf")
    first = engine.generate(ask("a handwritten seven"))
    near = engine.generate(ask("the number seven", seed=5))
    assert 0 < near.stats.resumed_from <= STEPS // 2
    assert near.stats.model_evaluations == STEPS - near.stats.resumed_from and near.stats.steps == STEPS
    again = engine.generate(ask("a handwritten seven"))
    assert again.stats.resumed_from == STEPS // 2
    assert 0 < (again.images - first.images).abs().max() < 0.05  # the int8 state's error, not a different image
