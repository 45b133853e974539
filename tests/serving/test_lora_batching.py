"""LoRA adapters through the scheduler, continuous and static: requests with different adapters sent together
each get the images they get alone, never share a model call (their `batch_size` counts only their own
adapter's images), and the adapter is off again once its requests are done."""

from __future__ import annotations

import pytest
import torch
from ditserve_testing import running_scheduler

from ditserve.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("one_thread")


def req(seed: int, lora: str | None = None) -> GenerationRequest:
    return GenerationRequest(class_label=seed % 10, seed=seed, steps=8, lora=lora)


def test_an_adapter_request_and_a_plain_one_sent_together_each_get_their_own_images(digits_engine):
    with running_scheduler(digits_engine) as scheduler:
        alone = [scheduler.submit(r).result(60) for r in (req(1, "bold"), req(2))]
        switches = digits_engine.loras.switches
        together = [scheduler.submit(r) for r in (req(1, "bold"), req(2))]
        results = [ticket.result(60) for ticket in together]
    assert [r.stats.batch_size for r in results] == [1, 1], "the adapter and the plain request shared a call"
    for got, want in zip(results, alone, strict=True):
        assert torch.equal(got.images, want.images)
    assert digits_engine.loras.switches >= switches + 2  # on for the adapter's call, off for the plain one
    assert digits_engine.loras.active is None


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_requests_of_two_adapters_batch_only_with_their_own(digits_engine, batching):
    """Two adapter requests and two plain ones at once: each pair shares its calls, the pairs never do. Continuous
    calls are padded to a fixed shape (`pad_batches`), so its images are bit-identical to each request served
    alone; a static batch's `batch_size` would count its padding, so it runs unpadded, equal up to the rounding
    of a two-image batch."""
    requests = [req(1, "bold"), req(2), req(3, "bold"), req(4)]
    padded = batching == "continuous"
    with running_scheduler(digits_engine, batching=batching, pad_batches=padded, batch_wait_ms=200) as scheduler:
        results = [ticket.result(60) for ticket in [scheduler.submit(r) for r in requests]]
        alone = [scheduler.submit(r).result(60) for r in requests]
    assert [r.stats.batch_size for r in results] == [2, 2, 2, 2], "requests of different adapters shared a batch"
    assert [r.stats.batch_size for r in alone] == [1, 1, 1, 1]
    for got, want in zip(results, alone, strict=True):
        assert (got.images - want.images).abs().max() <= (0 if padded else 1e-5)
    assert (results[0].images - digits_engine.generate(req(1)).images).abs().max() > 0.1  # the adapter ran
    assert digits_engine.loras.active is None
