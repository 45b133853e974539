"""Continuous (step-level) batching through the scheduler on the embedded digits DiT: requests join a running
batch with their own steps, guidance and seeds, leave when done or cancelled, and strategies that cannot run
beside other requests' steps keep to batches of their own."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from ditserve.config import ServeLimits
from ditserve.continuous import mixing_problem
from ditserve.errors import Cancelled
from ditserve.request import GenerationRequest
from ditserve.scheduler import Scheduler, Ticket

pytestmark = pytest.mark.usefixtures("one_thread")

CLOSE = 1e-5
"""Largest pixel difference from the request served alone: only the rounding of a different batch shape."""


@contextlib.contextmanager
def running(engine, **limits) -> Iterator[Scheduler]:
    scheduler = Scheduler(engine, ServeLimits(**{"max_queue": 8, "batch_images": 4, "max_batch": 4, **limits}))
    try:
        yield scheduler
    finally:
        scheduler.close(60)


def req(seed: int, **fields) -> GenerationRequest:
    return GenerationRequest(class_label=fields.pop("class_label", 3), seed=seed, **fields)


def submit_watched(scheduler: Scheduler, request: GenerationRequest) -> tuple[Ticket, list[int]]:
    """Submit `request`; the steps it reported so far, in a list that grows."""
    steps: list[int] = []
    return scheduler.submit(request, on_progress=lambda update: steps.append(update.step)), steps


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def finish_order(tickets: dict[str, Ticket]) -> list[str]:
    """The names of `tickets` in the order their results arrive (recorded as they are answered)."""
    order: list[str] = []
    for name, ticket in tickets.items():
        ticket.future.add_done_callback(lambda _, name=name: order.append(name))
    return order


def distance_from_alone(engine, request: GenerationRequest, images: torch.Tensor) -> float:
    """Largest pixel difference from the same request run alone through the engine's own sampling loop."""
    return (images - engine.generate(request).images).abs().max().item()


def test_a_request_joining_a_running_batch_gets_the_image_it_gets_alone(digits_engine):
    first_request = req(1, steps=30)
    joiner_request = req(2, class_label=7, steps=12, guidance_scale=2.0)
    with running(digits_engine) as scheduler:
        first, first_steps = submit_watched(scheduler, first_request)
        wait_until(lambda: len(first_steps) >= 5)
        joiner = scheduler.submit(joiner_request)
        order = finish_order({"first": first, "joiner": joiner})
        a, b = first.result(60), joiner.result(60)
    assert a.stats.batch_size == b.stats.batch_size == 2, "the request did not join the running batch"
    assert order == ["joiner", "first"], "a finished request waited for its batch-mates"
    assert a.stats.steps == 30 and b.stats.steps == 12
    assert distance_from_alone(digits_engine, first_request, a.images) <= CLOSE
    assert distance_from_alone(digits_engine, joiner_request, b.images) <= CLOSE


def test_padded_calls_make_a_joining_request_bit_identical_to_it_alone(digits_engine):
    """The reproducible mode: every call padded to 2 × batch_images rows, whatever joins or leaves."""
    first_request, joiner_request = req(1, steps=20), req(2, class_label=5, steps=10, guidance_scale=1.0)
    with running(digits_engine, pad_batches=True) as scheduler:
        first, first_steps = submit_watched(scheduler, first_request)
        wait_until(lambda: len(first_steps) >= 3)
        joiner = scheduler.submit(joiner_request)
        a, b = first.result(60), joiner.result(60)
        assert a.stats.batch_size == b.stats.batch_size == 2
        alone_a = scheduler.submit(first_request).result(60)
        alone_b = scheduler.submit(joiner_request).result(60)
    assert alone_a.stats.batch_size == alone_b.stats.batch_size == 1
    assert torch.equal(a.images, alone_a.images)
    assert torch.equal(b.images, alone_b.images)


def test_leaving_and_cancelling_mid_batch_do_not_disturb_the_others(digits_engine):
    stays, leaves = req(1, steps=30), req(2, class_label=0, steps=8)
    with running(digits_engine) as scheduler:
        staying, staying_steps = submit_watched(scheduler, stays)
        leaving = scheduler.submit(leaves)
        cancelled, cancelled_steps = submit_watched(scheduler, req(3, class_label=9, steps=30))
        order = finish_order({"leaving": leaving, "cancelled": cancelled, "staying": staying})
        wait_until(lambda: len(cancelled_steps) >= 12)
        scheduler.cancel(cancelled)
        with pytest.raises(Cancelled) as stopped:
            cancelled.result(60)
        a, b = staying.result(60), leaving.result(60)
    assert 12 <= stopped.value.steps_done < 30
    assert order == ["leaving", "cancelled", "staying"]
    assert a.stats.batch_size == 3 and a.stats.steps == 30
    assert distance_from_alone(digits_engine, stays, a.images) <= CLOSE
    assert distance_from_alone(digits_engine, leaves, b.images) <= CLOSE


def test_a_cache_that_cannot_mix_refuses_to_share_a_batch(digits_engine):
    """FORA decides for a whole model call: a request overriding the cache with it runs in a batch of its own,
    and a request queued behind it does not overtake it into the running batch."""
    cached_request = req(2, steps=10, cache={"name": "fora", "interval": 3})
    assert "fora" in mixing_problem(digits_engine, digits_engine.validate(cached_request))
    with running(digits_engine) as scheduler:
        first, first_steps = submit_watched(scheduler, req(1, steps=25))
        wait_until(lambda: len(first_steps) >= 3)
        cached = scheduler.submit(cached_request)
        later = scheduler.submit(req(3, steps=10))
        order = finish_order({"first": first, "cached": cached, "later": later})
        results = [ticket.result(60) for ticket in (first, cached, later)]
    assert [r.stats.batch_size for r in results] == [1, 1, 1]
    assert order == ["first", "cached", "later"]
    assert results[1].stats.blocks_skipped > 0, "the override's cache did not run"


def test_a_sampler_that_cannot_mix_is_named(digits_engine):
    job = digits_engine.validate(req(1, steps=8, sampler={"name": "paradigms"}))
    assert "paradigms" in mixing_problem(digits_engine, job)
    assert mixing_problem(digits_engine, digits_engine.validate(req(1, sampler={"name": "ddpm"}))) is None
