"""The cross-request cache (ditserve/nirvana.py) on the embedded models: a near-identical prompt starts part-way
and skips steps, a dissimilar one changes nothing, API keys and opt-outs are respected, the bounds evict the least
recently used, and a static batch never mixes start steps.

Measured here (10 steps, guidance 4, CPU): the same request sent twice starts the second time at step 5 of 10 and
gives the first's image within 4.2e-7 (digits-flow, flow Euler) and 3.0e-7 (digits-dit, DDIM): the skipped steps
reach the kept state exactly. The bound below leaves room for other CPUs' rounding.
"""

from __future__ import annotations

import threading

import pytest
import torch

from ditserve.config import load_config
from ditserve.engine import Engine
from ditserve.errors import Cancelled
from ditserve.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 10
SAME = 1e-5
"""Largest pixel difference between a run and the same request resumed from it (float rounding)."""


def cached_engine(name: str = "digits-flow", **fields) -> Engine:
    """The shipped model with the cross-request cache enabled (its other fields as given, else the defaults)."""
    config = load_config(f"builtin:{name}")
    cache = config.plan.approx_cache.model_copy(update={"enabled": True, **fields})
    return Engine(config.model_copy(update={"plan": config.plan.model_copy(update={"approx_cache": cache})}))


@pytest.fixture(scope="module")
def fresh():
    """digits-flow as shipped: the cache off."""
    return Engine.from_config("builtin:digits-flow")


def ask(prompt: str, seed: int = 0, **fields) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, seed=seed, steps=STEPS, **fields)


def test_off_by_default(fresh):
    assert not load_config("builtin:digits-flow").plan.approx_cache.enabled
    first, again = fresh.generate(ask("a handwritten seven")), fresh.generate(ask("a handwritten seven"))
    assert again.stats.resumed_from == 0 and again.stats.model_evaluations == STEPS
    assert torch.equal(first.images, again.images) and not fresh.nirvana.entries


def test_identical_prompt_resumes_at_the_last_rung():
    engine = cached_engine()
    first = engine.generate(ask("a handwritten seven"))
    again = engine.generate(ask("a handwritten seven"))
    assert first.stats.resumed_from == 0 and first.stats.model_evaluations == STEPS
    assert again.stats.resumed_from == STEPS // 2  # the default ladder's last rung: half the steps
    assert again.stats.model_evaluations == STEPS - STEPS // 2 and again.stats.steps == STEPS
    assert (again.images - first.images).abs().max() < SAME


def test_near_identical_prompt_skips_steps_and_a_dissimilar_one_changes_nothing(fresh):
    engine = cached_engine()
    engine.generate(ask("a handwritten seven"))
    near = engine.generate(ask("the number seven", seed=5))
    assert 0 < near.stats.resumed_from <= STEPS // 2
    assert near.stats.model_evaluations == STEPS - near.stats.resumed_from
    other = engine.generate(ask("a handwritten two", seed=3))
    assert other.stats.resumed_from == 0 and other.stats.model_evaluations == STEPS
    assert torch.equal(other.images, fresh.generate(ask("a handwritten two", seed=3)).images)


def test_class_model_resumes_within_a_class_only():
    engine = cached_engine("digits-dit")
    request = GenerationRequest(class_label=3, seed=0, steps=STEPS)
    first = engine.generate(request)
    again = engine.generate(request)
    assert again.stats.resumed_from == STEPS // 2 and (again.images - first.images).abs().max() < SAME
    assert engine.generate(GenerationRequest(class_label=4, seed=0, steps=STEPS)).stats.resumed_from == 0


def test_api_keys_never_share_entries():
    engine = cached_engine()
    engine.generate(ask("a handwritten seven", tenant="key-a"))
    assert engine.generate(ask("a handwritten seven", tenant="key-b")).stats.resumed_from == 0
    assert engine.generate(ask("a handwritten seven")).stats.resumed_from == 0  # no key is a scope of its own
    assert engine.generate(ask("a handwritten seven", tenant="key-a")).stats.resumed_from == STEPS // 2


def test_opt_out_neither_starts_from_nor_leaves_an_entry(fresh):
    engine = cached_engine()
    opted = engine.generate(ask("a handwritten seven", approx_cache=False))
    assert not engine.nirvana.entries and torch.equal(opted.images, fresh.generate(ask("a handwritten seven")).images)
    engine.generate(ask("a handwritten seven"))
    again = engine.generate(ask("a handwritten seven", approx_cache=False))
    assert again.stats.resumed_from == 0 and again.stats.model_evaluations == STEPS


def test_other_schedules_do_not_match():
    """A state is valid for a run of the same steps and guidance only."""
    engine = cached_engine()
    engine.generate(ask("a handwritten seven"))
    assert engine.generate(GenerationRequest(prompt="a handwritten seven", steps=STEPS + 2)).stats.resumed_from == 0
    assert engine.generate(ask("a handwritten seven", guidance_scale=2.0)).stats.resumed_from == 0


def test_least_recently_used_goes_first_within_the_entry_bound():
    engine = cached_engine(max_entries=2)
    engine.generate(ask("one"))
    engine.generate(ask("two"))
    assert engine.generate(ask("one", seed=1)).stats.resumed_from > 0  # a hit: "one" is now the most recent
    engine.generate(ask("three"))  # evicts "two"
    assert len(engine.nirvana.entries) == 2
    assert engine.generate(ask("two", seed=1)).stats.resumed_from == 0  # and is kept again, evicting "one"
    assert engine.generate(ask("three", seed=1)).stats.resumed_from > 0
    assert engine.generate(ask("one", seed=2)).stats.resumed_from == 0


def test_a_kept_run_retires_after_max_reuse():
    engine = cached_engine(max_reuse=2)
    engine.generate(ask("a handwritten seven"))
    starts = [engine.generate(ask("a handwritten seven", seed=k)).stats.resumed_from for k in (1, 2, 3, 4)]
    assert starts == [STEPS // 2, STEPS // 2, 0, STEPS // 2]  # retired after two starts; the miss is kept instead


def test_byte_bound_holds():
    probe = cached_engine()
    probe.generate(ask("one"))
    entry_bytes = probe.nirvana.nbytes
    engine = cached_engine(max_bytes=2 * entry_bytes + entry_bytes // 2)
    for prompt in ("one", "two", "three"):
        engine.generate(ask(prompt))
        assert engine.nirvana.nbytes <= 2 * entry_bytes + entry_bytes // 2
    assert len(engine.nirvana.entries) == 2
    assert engine.generate(ask("one", seed=1)).stats.resumed_from == 0
    tiny = cached_engine(max_bytes=entry_bytes - 1)
    tiny.generate(ask("one"))
    assert not tiny.nirvana.entries  # an entry larger than the bound is not kept


def test_a_request_with_more_images_than_an_entry_misses():
    engine = cached_engine()
    engine.generate(ask("a handwritten seven"))
    assert engine.generate(ask("a handwritten seven", num_images=2)).stats.resumed_from == 0
    assert engine.generate(ask("a handwritten seven", num_images=2)).stats.resumed_from == STEPS // 2


def test_a_static_batch_starts_all_its_requests_at_one_step():
    engine = cached_engine(max_reuse=1)  # a batch that runs from noise must not use up its requests' matches
    engine.generate(ask("a handwritten seven"))
    engine.generate(ask("a handwritten two"))
    mixed = engine.generate_batch([ask("a handwritten seven", seed=4), ask("a handwritten five", seed=4)])
    assert [r.stats.resumed_from for r in mixed] == [0, 0]  # one hit, one miss: both from noise
    apart = engine.generate_batch([ask("a handwritten seven", seed=5), ask("two", seed=5)])  # similarity 0.985
    assert [r.stats.resumed_from for r in apart] == [0, 0]  # hits at different rungs: both from noise
    both = engine.generate_batch([ask("a handwritten seven", seed=6), ask("a handwritten two", seed=6)])
    assert [r.stats.resumed_from for r in both] == [STEPS // 2] * 2
    assert both[0].stats.model_evaluations == STEPS - STEPS // 2


def test_a_cancelled_request_leaves_nothing():
    engine = cached_engine()
    cancel = threading.Event()

    def stop_late(event) -> None:
        if event.step == STEPS - 1:
            cancel.set()

    with pytest.raises(Cancelled):
        engine.generate(ask("a handwritten seven"), on_progress=stop_late, cancel=cancel)
    assert not engine.nirvana.entries


def test_calibration_runs_never_start_from_kept_runs():
    from ditserve.calibrate import calibration_requests

    engine = cached_engine()
    requests = calibration_requests(engine, samples=12, steps=STEPS)  # 120 prompts cycled: "zero" … "nine", "0" …
    starts = [engine.generate(request).stats.resumed_from for request in requests]
    assert starts == [0] * 12 and not engine.nirvana.entries
