"""An engine whose plan has a 2-rank runner: it spawns its ranks, serves requests through rank 0, and
turns a killed rank into a fast failure and a not-alive engine."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch
from ditserve_testing import engine_for

from ditserve.errors import Cancelled
from ditserve.parallel.launcher import RankFailure
from ditserve.request import GenerationRequest

TIMEOUT_S = 10.0
START_S = 900.0  # the ranks import torch and diffusers: minutes on a loaded 2-core machine
REQUEST = GenerationRequest(class_label=3, steps=5, seed=11, num_images=2, guidance_scale=3.0)


@pytest.fixture(scope="module")
def single(tiny_dit_dir):
    return engine_for(tiny_dit_dir, sampler={"name": "ddim", "steps": 5})


@pytest.fixture(scope="module")
def ranked(tiny_dit_dir):
    engine = engine_for(
        tiny_dit_dir,
        sampler={"name": "ddim", "steps": 5},
        parallel={"name": "ulysses", "ulysses": 2, "timeout_s": TIMEOUT_S, "start_timeout_s": START_S},
    )
    yield engine
    engine.close()


def test_the_ranks_answer_like_the_single_process_engine_with_progress(ranked, single):
    events = []
    result = ranked.generate(REQUEST, on_progress=events.append)
    expected = single.generate(REQUEST)
    assert torch.allclose(result.images, expected.images, atol=1e-4, rtol=0)
    assert result.seeds == expected.seeds
    assert [event.step for event in events] == [1, 2, 3, 4, 5]
    assert result.stats.steps == 5 and ranked.alive


def test_a_cancelled_request_stops_every_rank_and_the_next_one_runs(ranked, single):
    cancel = threading.Event()

    def cancel_after_two(event):
        if event.step == 2:
            cancel.set()

    with pytest.raises(Cancelled) as stopped:
        ranked.generate(
            GenerationRequest(class_label=3, steps=100, seed=1), on_progress=cancel_after_two, cancel=cancel
        )
    assert 2 <= stopped.value.steps_done < 100
    assert torch.allclose(ranked.generate(REQUEST).images, single.generate(REQUEST).images, atol=1e-4, rtol=0)


def test_a_bad_size_is_refused_before_the_ranks_see_it(ranked):
    from ditserve.errors import RequestError

    with pytest.raises(RequestError):
        ranked.generate(GenerationRequest(class_label=1, steps=2, height=10, width=10))
    assert ranked.alive


def test_a_killed_rank_fails_the_request_fast_and_the_engine_is_not_alive(ranked):
    """Last in this module: it takes the engine down."""
    victim = ranked.parallel.pool.pids[1]
    killed_at = []

    def kill_at_step_two(event):
        if event.step == 2 and not killed_at:
            os.kill(victim, signal.SIGKILL)
            killed_at.append(time.monotonic())

    long = GenerationRequest(class_label=3, steps=200, seed=1)
    with pytest.raises(RankFailure, match=f"rank 1 \\(pid {victim}\\) exited with signal SIGKILL"):
        ranked.generate(long, on_progress=kill_at_step_two)
    assert time.monotonic() - killed_at[0] < TIMEOUT_S
    assert not ranked.alive
    started = time.monotonic()
    with pytest.raises(RankFailure, match="restart the service"):
        ranked.generate(REQUEST)
    assert time.monotonic() - started < 1.0


@pytest.mark.slow
def test_a_hung_rank_fails_the_request_after_the_collective_timeout(tiny_dit_dir):
    timeout_s = 5.0
    engine = engine_for(
        tiny_dit_dir,
        sampler={"name": "ddim", "steps": 5},
        parallel={"name": "ring", "ring": 2, "timeout_s": timeout_s, "start_timeout_s": START_S},
    )
    try:
        victim = engine.parallel.pool.pids[1]

        def stop_at_step_two(event):
            if event.step == 2:
                os.kill(victim, signal.SIGSTOP)

        started = time.monotonic()
        with pytest.raises(RankFailure, match="a rank hangs|[Tt]imed? ?out"):
            engine.generate(GenerationRequest(class_label=3, steps=200, seed=1), on_progress=stop_at_step_two)
        assert time.monotonic() - started < 3 * timeout_s
        assert not engine.alive
    finally:
        engine.close()


@pytest.mark.slow
def test_data_parallel_replicas_answer_each_request_like_one_process(tiny_dit_dir, single):
    engine = engine_for(
        tiny_dit_dir,
        sampler={"name": "ddim", "steps": 5},
        parallel={"name": "data", "dp": 2, "start_timeout_s": START_S},
    )
    try:
        requests = [
            GenerationRequest(class_label=label, steps=5, seed=label, guidance_scale=3.0) for label in (1, 2, 3)
        ]
        results = engine.generate_batch(requests)
        for request, result in zip(requests, results, strict=True):
            assert torch.allclose(result.images, single.generate(request).images, atol=1e-4, rtol=0)
    finally:
        engine.close()
