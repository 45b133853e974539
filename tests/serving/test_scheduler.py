"""The scheduler in-process over a tiny random DiT: batching, bit-identity, backpressure, cancellation, faults —
the guarantees that hold under both continuous and static batching (tests/serving/test_continuous.py: joining
and leaving a continuous batch on the embedded model)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from ditserve.config import ServeLimits
from ditserve.errors import Cancelled, RequestError
from ditserve.request import GenerationRequest
from ditserve.scheduler import QueueFull, Scheduler, ShuttingDown


@pytest.fixture(scope="module")
def engine(tiny_dit_dir):
    from ditserve.config import parse_config
    from ditserve.engine import Engine

    torch.set_num_threads(1)
    model = {"name": "tiny", "path": str(tiny_dit_dir), "family": "dit"}
    return Engine(parse_config({"model": model, "plan": {"sampler": {"name": "ddim", "steps": 10}}}))


@pytest.fixture(params=["continuous", "static"])
def batching(request) -> str:
    return request.param


def make(engine, **limits) -> Scheduler:
    base = {"max_queue": 8, "batch_images": 4, "batch_wait_ms": 200.0, "max_batch": 4}
    return Scheduler(engine, ServeLimits(**{**base, **limits}))


@contextlib.contextmanager
def running(engine, **limits) -> Iterator[Scheduler]:
    """`make`'s scheduler, closed (within 30 s) when the block ends, however it ends."""
    scheduler = make(engine, **limits)
    try:
        yield scheduler
    finally:
        scheduler.close(30)


def wait_for(condition, seconds: float = 10.0) -> None:
    """Poll `condition` until it holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def req(seed: int, **fields) -> GenerationRequest:
    return GenerationRequest(class_label=fields.pop("class_label", 3), seed=seed, **fields)


def test_padded_batches_are_bit_identical_to_each_request_alone(engine, batching):
    with running(engine, pad_batches=True, batching=batching) as scheduler:
        tickets = [scheduler.submit(req(s)) for s in (1, 2, 3)]
        together = [t.result(60) for t in tickets]
        # static: three requests + one filler image in one batch; continuous: the first starts alone, the
        # others join at its second step, every call padded to 2 × 4 rows
        assert {r.stats.batch_size for r in together} == ({4} if batching == "static" else {3})
        alone = [scheduler.submit(req(s)).result(60) for s in (1, 2, 3)]
        for a, b in zip(together, alone, strict=True):
            assert torch.equal(a.images, b.images)


def test_without_padding_static_batches_have_their_own_shape_and_stay_close_to_alone(engine):
    """Unpadded, a batch runs at its own size (the shape that may change the last float bits, see the module)."""
    with running(engine, batching="static") as scheduler:
        together = [scheduler.submit(req(s)) for s in (1, 2, 3)]
        batched = together[0].result(60)
        alone = scheduler.submit(req(1)).result(60)
        assert batched.stats.batch_size == 3 and alone.stats.batch_size == 1
        assert (batched.images - alone.images).abs().max() < 1e-4


def trickle(engine, batch_wait_max_ms: float, offsets_s: list[float]) -> list[int]:
    """Under a 0.4 s `batch_wait_ms`, submit one request now and one at each offset (seconds from now); the
    batch size each of them ran in, in order."""
    limits = {"batching": "static", "batch_wait_ms": 400.0, "batch_wait_max_ms": batch_wait_max_ms}
    with running(engine, **limits) as scheduler:
        started = time.monotonic()
        tickets = [scheduler.submit(req(0))]
        for k, offset in enumerate(offsets_s, start=1):
            time.sleep(max(0.0, started + offset - time.monotonic()))
            tickets.append(scheduler.submit(req(k)))
        return [t.result(60).stats.batch_size for t in tickets]


def test_a_batch_keeps_filling_while_requests_keep_arriving(engine):
    """Gaps of 0.15 s under a 0.4 s wait: all four join one batch, though the last comes 0.45 s after the first
    (a fixed 0.4 s window from the first request would have run three and left the fourth alone)."""
    assert trickle(engine, 5000.0, [0.15, 0.30, 0.45]) == [4, 4, 4, 4]


def test_a_batch_waits_no_longer_than_batch_wait_max_ms(engine):
    """Each arrival within the 0.4 s wait, but the third comes 0.3 s after `batch_wait_max_ms` (0.5 s) ran out."""
    assert trickle(engine, 500.0, [0.15, 0.30, 0.80]) == [3, 3, 3, 1]


def test_incompatible_requests_do_not_share_a_static_batch(engine):
    with running(engine, batching="static") as scheduler:
        a, b = scheduler.submit(req(1, steps=4)), scheduler.submit(req(2, steps=5))
        assert a.result(60).stats.batch_size == b.result(60).stats.batch_size == 1


def test_validation_happens_at_submit_and_the_queue_is_bounded(engine, batching):
    with running(engine, max_queue=2, batch_wait_ms=0.0, batching=batching) as scheduler:
        with pytest.raises(RequestError, match="steps"):
            scheduler.submit(req(1, steps=10_000))
        held = [scheduler.submit(req(s, steps=200)) for s in (1, 2)]
        with pytest.raises(QueueFull, match="2 requests"):
            scheduler.submit(req(3))
        for t in held:
            scheduler.cancel(t)
        assert scheduler.submit(req(4, steps=2)).result(60).stats.steps == 2


def test_cancel_and_deadline_stop_within_one_step(engine, batching):
    with running(engine, batch_wait_ms=0.0, batching=batching) as scheduler:
        seen = []
        ticket = scheduler.submit(req(1, steps=200), on_progress=lambda u: seen.append(u.step))
        while len(seen) < 3:
            time.sleep(0.005)
        blocks = engine.block_counter.count
        scheduler.cancel(ticket)
        with pytest.raises(Cancelled) as err:
            ticket.result(30)
        assert err.value.steps_done < 200
        assert engine.block_counter.count - blocks <= 2 * 2  # at most the step in progress (2 blocks per step)
        late = scheduler.submit(req(2, steps=200), timeout_s=0.2)
        with pytest.raises(Cancelled, match="deadline"):
            late.result(30)


def test_the_servers_warm_up_has_no_deadline(engine, batching):
    """A warm-up slower than `limits.timeout_s` (a busy machine) must still finish, or the server never gets ready."""
    with running(engine, batch_wait_ms=0.0, timeout_s=0.05, batching=batching) as scheduler:
        with pytest.raises(Cancelled, match="deadline"):
            scheduler.submit(req(1, steps=200)).result(30)
        assert scheduler.submit(req(1, steps=200), deadline=False).result(60).stats.steps == 200


def test_a_running_request_whose_caller_cancels_its_future_frees_its_place(engine, batching):
    """asyncio's `wrap_future` cancels the ticket's future when the awaiting task is cancelled (a gRPC client
    past its deadline); the request must still leave the queue count, or every such request leaks a place."""
    with running(engine, batch_wait_ms=0.0, max_queue=1, batching=batching) as scheduler:
        seen = []
        ticket = scheduler.submit(req(1, steps=200), on_progress=lambda u: seen.append(u.step))
        wait_for(lambda: seen)
        assert ticket.future.cancel()
        scheduler.cancel(ticket)
        wait_for(lambda: scheduler.admitted == 0)
        assert scheduler.submit(req(2, steps=2)).result(30).stats.steps == 2


def test_a_failure_inside_one_batch_fails_only_that_batch(engine, monkeypatch, batching):
    """Fault injection (a mock, named as such): an out-of-memory error we cannot cause on this machine."""
    with running(engine, batch_wait_ms=0.0, batching=batching) as scheduler:
        fresh = scheduler.submit(req(5)).result(60)
        real_predict, calls = engine.adapter.predict, []

        def out_of_memory_once(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise torch.OutOfMemoryError("injected: CUDA out of memory")
            return real_predict(*args, **kwargs)

        monkeypatch.setattr(engine.adapter, "predict", out_of_memory_once)
        with pytest.raises(torch.OutOfMemoryError):
            scheduler.submit(req(6)).result(60)
        again = scheduler.submit(req(5)).result(60)
        assert torch.equal(again.images, fresh.images)


def test_failing_metrics_hooks_do_not_stop_the_worker(engine, batching):
    """Fault injection (named as such): metrics writes that raise, as prometheus' multi-process files do when
    their disk is full; every request is still answered."""
    from ditserve.scheduler import SchedulerHooks

    class BrokenMetrics(SchedulerHooks):
        def queue_depth(self, depth):
            raise OSError("injected: no space left on device")

        batch_started = step_done = blocks_done = lambda self, *args: self.queue_depth(0)

    limits = ServeLimits(max_queue=8, batch_images=4, max_batch=4, batch_wait_ms=0.0, batching=batching)
    scheduler = Scheduler(engine, limits, BrokenMetrics())
    try:
        tickets = [scheduler.submit(req(seed, steps=3)) for seed in (1, 2)]
        assert [t.result(60).stats.steps for t in tickets] == [3, 3]
        assert scheduler.submit(req(3, steps=2)).result(60).stats.steps == 2
    finally:
        scheduler.close(30)


def test_close_drains_admitted_work_and_refuses_new(engine, batching):
    scheduler = make(engine, batch_wait_ms=0.0, batching=batching)
    ticket = scheduler.submit(req(1, steps=50))
    closer = threading.Thread(target=scheduler.close, args=(60,))
    closer.start()
    time.sleep(0.01)
    with pytest.raises(ShuttingDown):
        scheduler.submit(req(2))
    assert ticket.result(60).stats.steps == 50
    closer.join(60)
    assert not closer.is_alive()


def test_a_plan_whose_cache_cannot_mix_batches_statically(tiny_dit_dir):
    """FORA in the plan decides for whole model calls: a request arriving while another runs waits for it,
    and requests of one plan that arrive together still share a batch."""
    from ditserve.config import parse_config
    from ditserve.engine import Engine

    model = {"name": "tiny", "path": str(tiny_dit_dir), "family": "dit"}
    plan = {"sampler": {"name": "ddim", "steps": 10}, "cache": {"name": "fora", "interval": 2}}
    fora = Engine(parse_config({"model": model, "plan": plan}))
    with running(fora, batch_wait_ms=100.0) as scheduler:
        seen = []
        first = scheduler.submit(req(1, steps=200), on_progress=lambda u: seen.append(u.step))
        wait_for(lambda: seen)
        later = [scheduler.submit(req(s, steps=200)) for s in (2, 3)]
        assert first.result(60).stats.batch_size == 1
        assert [t.result(60).stats.batch_size for t in later] == [2, 2]
