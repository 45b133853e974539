"""Continuous (step-level) batching through the scheduler on the embedded digits DiT: requests join a running
batch with their own steps, guidance and seeds, leave when done or cancelled, and strategies that cannot run
beside other requests' steps keep to batches of their own."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
from ditserve_testing import running_scheduler

from ditserve.continuous import mixing_problem
from ditserve.errors import Cancelled
from ditserve.request import GenerationRequest
from ditserve.scheduler import Scheduler, Ticket

pytestmark = pytest.mark.usefixtures("one_thread")

CLOSE = 1e-5
"""Largest pixel difference from the request served alone: only the rounding of a different batch shape."""


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
    with running_scheduler(digits_engine) as scheduler:
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
    with running_scheduler(digits_engine, pad_batches=True) as scheduler:
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
    with running_scheduler(digits_engine) as scheduler:
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
    with running_scheduler(digits_engine) as scheduler:
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


def edit_fields() -> dict:
    """An edit's init image (a bright bar) and a mask of its right half, as PNG bytes."""
    from ditserve.serving import png

    three = torch.zeros(1, 16, 16)
    three[:, 3:13, 5:11] = 1.0
    mask = torch.zeros(1, 16, 16)
    mask[:, :, 8:] = 1.0
    return {"init_image": png.encode(three), "mask": png.encode(mask)}


def test_edits_join_a_running_batch_at_their_later_timestep_and_obey_cancel_and_deadline(digits_engine):
    """An img2img request starts at step int(steps × (1 − strength)) of its own schedule: its skipped steps take no
    model call and it joins the running calls there, per sample like a request with other steps; an inpainting
    request joins at once. Each gets its image alone; cancelling or timing out an edit stops it alone."""
    fields = edit_fields()
    img2img = req(2, class_label=8, steps=12, init_image=fields["init_image"], strength=0.5)
    inpaint = req(3, class_label=8, steps=8, **fields)
    with running_scheduler(digits_engine) as scheduler:
        first, first_steps = submit_watched(scheduler, req(1, steps=30))
        wait_until(lambda: len(first_steps) >= 3)
        edits = [scheduler.submit(img2img), scheduler.submit(inpaint)]
        cancelled, cancelled_steps = submit_watched(scheduler, req(4, class_label=2, steps=30, **fields))
        wait_until(lambda: len(cancelled_steps) >= 4)
        scheduler.cancel(cancelled)
        late = scheduler.submit(req(5, class_label=2, steps=30, **fields), timeout_s=0.05)
        results = [ticket.result(60) for ticket in (first, *edits)]
        with pytest.raises(Cancelled):
            cancelled.result(60)
        with pytest.raises(Cancelled, match="deadline"):
            late.result(60)
    assert min(r.stats.batch_size for r in results) >= 3, "the edits did not share the running calls"
    assert results[1].stats.model_evaluations == 6 and results[1].stats.steps == 12
    assert results[2].stats.model_evaluations == 8
    for request, result in zip((img2img, inpaint), results[1:], strict=True):
        assert distance_from_alone(digits_engine, request, result.images) <= CLOSE


def test_static_batches_group_edits_by_strength_and_mask(digits_engine):
    fields = edit_fields()
    requests = [
        req(1, steps=6, **fields),
        req(2, steps=6, class_label=5, **fields),  # same kind: one batch with the first
        req(3, steps=6, init_image=fields["init_image"], strength=0.5),  # img2img: a batch of its own
        req(4, steps=6),  # text-to-image: another
    ]
    with running_scheduler(digits_engine, batching="static", batch_wait_ms=200) as scheduler:
        tickets = [scheduler.submit(request) for request in requests]
        results = [ticket.result(60) for ticket in tickets]
    assert [r.stats.batch_size for r in results] == [2, 2, 1, 1]
    for request, result in zip(requests, results, strict=True):
        assert distance_from_alone(digits_engine, request, result.images) <= CLOSE
